// `tinyllama dpo`: Direct Preference Optimization (Rafailov et al. 2023) with TRL's loss variants over
// {"prompt", "chosen", "rejected"} pairs, full or LoRA, with sft's optimizer flags, checkpoints and
// --resume. The reference log-probabilities are computed once before the first step (with LoRA: by the
// base model, adapters switched off; see Training/Preferences/DpoObjective.cs). The output directory is
// a Hugging Face model directory, or a PEFT adapter directory with LoRA, as sft writes. With --json: one
// line per step, {"step", "loss", "rewards/chosen", "rewards/rejected", "rewards/margins",
// "rewards/accuracies", "lr", "tokens_per_second"}.
using System.CommandLine;
using TinyLlama.Training.Preferences;
using TinyLlama.Training.Trainer;

namespace TinyLlama.Cli.Commands;

internal static class DpoCommand
{
    public static Command Create()
    {
        var flags = new PreferenceTraining("Output directory (model, or adapter with LoRA; checkpoint/ inside)",
            "One JSON line per step: step, loss, rewards/chosen, rewards/rejected, rewards/margins, rewards/accuracies, lr, tokens_per_second");
        var beta = new Option<double>("--beta") { Description = "DPO beta: strength of the pull toward the reference", DefaultValueFactory = _ => 0.1 };
        var loss = new Option<string>("--loss") { Description = "sigmoid (DPO), ipo (on per-token mean log-probs, as TRL) or hinge", DefaultValueFactory = _ => "sigmoid" };
        var smoothing = new Option<double>("--label-smoothing") { Description = "Assumed fraction of flipped labels, in [0, 0.5) (sigmoid only)" };
        var rpo = new Option<double>("--rpo-alpha") { Description = "Weight of the chosen response's per-token NLL added to each pair's loss (TRL's rpo_alpha; 0 = plain DPO)" };
        var cmd = new Command("dpo", "Direct Preference Optimization on preference pairs.");
        flags.AddTo(cmd);
        cmd.Options.Add(beta);
        cmd.Options.Add(loss);
        cmd.Options.Add(smoothing);
        cmd.Options.Add(rpo);
        cmd.SetAction(parse =>
        {
            TinyLlama.Cli.Distributed.DataParallelFlags.RefuseUnderMpi("dpo");
            DpoOptions dpo;
            try
            {
                dpo = new DpoOptions(parse.GetValue(beta), DpoLoss.ParseKind(parse.GetValue(loss)!), parse.GetValue(smoothing), parse.GetValue(rpo));
                dpo.Validate();
            }
            catch (ArgumentException e) { throw new CliException(FlagOf(e.Message) + e.Message, isUsage: true); }
            var run = flags.Load(parse);
            var output = parse.InvocationConfiguration.Output;
            var loader = new PreferenceDataLoader(run.Train, run.BatchSize, run.Shuffle, run.Seed);
            if (!run.AsJson) output.WriteLine($"{run.Data.Summary()}; {run.Train.Count} train / {run.HeldOut.Count} held out; computing reference log-probabilities");
            var objective = new DpoObjective(run.Model, loader, dpo, run.PadId, run.MaxLength);
            var trainer = new SftTrainer(run.Model, objective, run.Options, rng: run.Rng);
            if (!run.AsJson)
                output.WriteLine($"{trainer.Trainable.Sum(p => (long)p.Param.Numel):N0} trainable parameters; {run.Options.Steps} steps of {dpo.Loss.ToString().ToLowerInvariant()} DPO, beta {dpo.Beta}");
            PreferenceTraining.Loop(run, trainer, log => output.WriteLine(run.AsJson ? PreferenceTraining.JsonStep(log) : PreferenceTraining.TextStep(log, run.Options.Steps)));
            SftCommand.SaveResult(run.OutPath, parse.GetValue(flags.Model)!, run.Model, run.Lora, parse.GetValue(flags.Tokenizer));
            if (!run.AsJson) output.WriteLine($"wrote {(run.Lora is null ? "model" : "LoRA adapter")} to {run.OutPath} (resumable checkpoint in {Path.Combine(run.OutPath, "checkpoint")})");
            return ExitCodes.Success;
        });
        return cmd;
    }

    // DpoLoss's messages name the setting in words; the CLI names the flag.
    private static string FlagOf(string message) =>
        message.Contains("beta", StringComparison.Ordinal) ? "--beta: "
        : message.Contains("unknown DPO loss", StringComparison.Ordinal) ? "--loss: "
        : message.Contains("rpo alpha", StringComparison.Ordinal) ? "--rpo-alpha: "
        : "--label-smoothing: ";
}
