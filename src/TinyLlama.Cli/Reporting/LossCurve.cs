// The loss curve as a PNG (ScottPlot): training loss per step and, where recorded, validation loss.
// Written atomically (temp file + rename) next to the checkpoint. It lives in the CLI, not the Training
// library, so that ScottPlot and SkiaSharp's native assets reach only the program's users.
namespace TinyLlama.Cli.Reporting;

/// <summary>Plots training curves.</summary>
public static class LossCurve
{
    /// <summary>Writes a PNG of (step, loss) series to path.</summary>
    public static void Save(string path, IReadOnlyList<(int Step, double Loss)> train, IReadOnlyList<(int Step, double Loss)> validation, string title)
    {
        var plot = new ScottPlot.Plot();
        if (train.Count > 0)
        {
            var s = plot.Add.Scatter(train.Select(p => (double)p.Step).ToArray(), train.Select(p => p.Loss).ToArray());
            s.LegendText = "train";
            s.MarkerSize = train.Count > 50 ? 0 : 4;
        }
        if (validation.Count > 0)
        {
            var v = plot.Add.Scatter(validation.Select(p => (double)p.Step).ToArray(), validation.Select(p => p.Loss).ToArray());
            v.LegendText = "validation";
            v.MarkerSize = 6;
        }
        plot.Title(title);
        plot.XLabel("step");
        plot.YLabel("loss");
        plot.ShowLegend();
        var full = Path.GetFullPath(path);
        var tmp = full + ".tmp-" + Environment.ProcessId + ".png";
        plot.SavePng(tmp, 800, 500);
        File.Move(tmp, full, overwrite: true);
    }
}
