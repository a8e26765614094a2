// Koala-style conditional training: a quality rating on a record becomes a fixed marker at the start
// of its prompt, so the model can learn from low-quality data too (it learns what a "bad" answer looks
// like *given the bad marker*) and is steered to the good behaviour at inference by always showing the
// good marker. Koala (Geng et al., BAIR blog, 2023) trained on positive and negative human-feedback
// data this way, following Chain of Hindsight (Liu et al., 2023): condition on a preference marker
// during training, prompt with the positive one at inference.
//
// The data field: a record (Alpaca or ShareGPT) may carry a top-level "quality": "good" | "bad".
// Records without the field are unrated and get no marker, so unrated data renders exactly as the
// plain Alpaca / Vicuna templates (and matches the reference token ids).
//
// The markers are plain text, not new vocabulary entries, so no embedding row has to be added: with
// the Llama tokenizer they become a few ordinary tokens. Where the marker goes:
//   Alpaca:  "{marker} Below is an instruction ..."   (the marker, one space, the usual prompt)
//   Vicuna:  "{marker} A chat between ..."            (the marker, one space, the system line)
namespace TinyLlama.Training.Data;

/// <summary>A record's quality rating for conditional training (<c>"quality"</c> in the data).</summary>
public enum SftQuality
{
    /// <summary>No <c>"quality"</c> field: no marker, the plain template.</summary>
    Unrated,
    /// <summary><c>"quality": "good"</c>; also what inference should use after conditional training.</summary>
    Good,
    /// <summary><c>"quality": "bad"</c>: still trained on, behind the bad marker.</summary>
    Bad,
}

/// <summary>The fixed quality markers of conditional (Koala-style) training.</summary>
public static class QualityTags
{
    /// <summary>Marker put in front of the prompt of records rated <c>"good"</c>.</summary>
    public const string Good = "[quality: good]";

    /// <summary>Marker put in front of the prompt of records rated <c>"bad"</c>.</summary>
    public const string Bad = "[quality: bad]";

    /// <summary>
    /// The quality to prompt with at inference (chat, the demo) for a model trained with rated data: the
    /// good one. A model trained only on unrated data should be prompted with <see cref="SftQuality.Unrated"/>.
    /// </summary>
    public static SftQuality ForInference => SftQuality.Good;

    /// <summary>The marker for a rating (<c>null</c> for <see cref="SftQuality.Unrated"/>).</summary>
    public static string? Tag(SftQuality quality) => quality switch
    {
        SftQuality.Unrated => null,
        SftQuality.Good => Good,
        SftQuality.Bad => Bad,
        _ => throw new ArgumentOutOfRangeException(nameof(quality)),
    };

    /// <summary><c>"{marker} {text}"</c>, or <paramref name="text"/> unchanged when unrated.</summary>
    public static string Apply(SftQuality quality, string text) => Tag(quality) is string tag ? tag + " " + text : text;

    /// <summary>Parses the data field's value: <c>"good"</c> or <c>"bad"</c> (exact, lower case); null when unknown.</summary>
    public static SftQuality? Parse(string value) => value switch
    {
        "good" => SftQuality.Good,
        "bad" => SftQuality.Bad,
        _ => null,
    };
}
