// Stop sequences on decoded text, as OpenAI's `stop` and chat formats' end markers (ChatML's
// "<|im_end|>") need them: a marker may be spelled by the tokenizer in several pieces, so it is
// matched on the text, not on ids. Streamed text holds back any tail that could still become a stop
// sequence, so a stop sequence is never shown, and text after it is cut.
using System.Text;

namespace TinyLlama.Generation;

/// <summary>Streams decoded text to a callback, holding back a tail that may be the start of a stop sequence.</summary>
public sealed class StopTextFilter
{
    private readonly string[] stops;
    private readonly Action<string>? onText;
    private readonly StringBuilder text = new();
    private int shown;

    /// <param name="stops">Stop sequences (empty ones are ignored).</param>
    /// <param name="onText">Receives text as soon as it can no longer be part of a stop sequence.</param>
    public StopTextFilter(IEnumerable<string> stops, Action<string>? onText)
    {
        ArgumentNullException.ThrowIfNull(stops);
        this.stops = [.. stops.Where(s => !string.IsNullOrEmpty(s))];
        this.onText = onText;
    }

    /// <summary>The text so far, without any stop sequence (and what followed it).</summary>
    public string Text => text.ToString();

    /// <summary>Appends a piece of text; true when a stop sequence is now complete (it and what follows are cut).</summary>
    public bool Push(string piece)
    {
        text.Append(piece);
        if (stops.Length == 0) { Show(text.Length); return false; }
        // Nothing before `shown` can start a stop sequence: it was shown only once no match could begin there.
        string tail = text.ToString(shown, text.Length - shown);
        int first = -1;
        foreach (var stop in stops)
        {
            int at = tail.IndexOf(stop, StringComparison.Ordinal);
            if (at >= 0 && (first < 0 || at < first)) first = at;
        }
        if (first >= 0)
        {
            Show(shown + first);
            text.Length = shown;
            return true;
        }
        int hold = 0;
        foreach (var stop in stops)
        {
            int h = Math.Min(stop.Length - 1, tail.Length);
            while (h > hold && !tail.AsSpan(tail.Length - h).SequenceEqual(stop.AsSpan(0, h))) h--;
            hold = Math.Max(hold, h);
        }
        Show(text.Length - hold);
        return false;
    }

    /// <summary>The text ended without a stop sequence: everything is shown.</summary>
    public void Finish(string piece)
    {
        text.Append(piece);
        Show(text.Length);
    }

    private void Show(int upTo)
    {
        if (upTo > shown) onText?.Invoke(text.ToString(shown, upTo - shown));
        shown = upTo;
    }
}
