// A reward model: LLaMA's decoder stack with a scalar head, laid out as Hugging Face's
// LlamaForSequenceClassification with num_labels = 1 (transformers/models/llama/modeling_llama.py):
//
//   r = score(h[last non-padding token]),   h = model.norm(decoder(ids))  (B, T, C),  score: Linear(C, 1, bias=False)
//
// trained on preference pairs with the pairwise loss of InstructGPT (Ouyang et al. 2022, eq. 1) as TRL's
// RewardTrainer computes it:  loss = -log sigmoid(r_chosen - r_rejected) = softplus(r_rejected - r_chosen),
// and accuracy = the fraction of pairs with r_chosen > r_rejected.
//
// The sequence scored is BOS + prompt + response + EOS (PreferenceData's tokenisation, labels unused), so
// the reward is read at the EOS, which has seen the whole response. Rows are right-padded; under causal
// attention the last real token never sees the padding after it.
//
// On disk (Save/Load) a reward model is a directory that is also an ordinary model directory:
//   config.json, model.safetensors   the LlamaForCausalLM weights (LoRA adapters merged in), HF names
//   score.safetensors                "score.weight" [1, C]
//   reward_model.json                {"kind": "reward_model", "score": "score.safetensors", "hidden_size": C}
// (HF keeps score.weight inside model.safetensors and has no lm_head; keeping the language model whole and
// the head beside it lets every loader of this engine read the trunk unchanged.)
using System.Text.Json;
using System.Text.Json.Nodes;
using TinyLlama.Autograd;
using TinyLlama.Formats;
using TinyLlama.Model;
using TinyLlama.NN;
using TinyLlama.Tensors;
using TinyLlama.Tokenizers;
using TinyLlama.Training.Data;
using TinyLlama.Training.Trainer;

namespace TinyLlama.Training.Preferences;

/// <summary>LLaMA with a scalar score head on the last non-padding token ("model.*" and "score.weight").</summary>
public sealed class RewardModel : Module
{
    /// <summary>File of the score head in a saved reward model.</summary>
    public const string ScoreFileName = "score.safetensors";

    /// <summary>The marker file that says a directory holds a reward model.</summary>
    public const string MarkerFileName = "reward_model.json";

    private const string Kind = "reward_model";

    /// <summary>
    /// A reward model over <paramref name="languageModel"/>'s decoder stack (shared, not copied: LoRA adapters
    /// put on it are this model's) and a new score head, initialised from <paramref name="generator"/>
    /// (Linear's default, U(-1/sqrt(C), 1/sqrt(C))) in the trunk's dtype and device.
    /// </summary>
    public RewardModel(LlamaForCausalLM languageModel, Generator? generator = null)
    {
        ArgumentNullException.ThrowIfNull(languageModel);
        LanguageModel = languageModel;
        var w = languageModel.Model.Norm.Weight;
        RegisterModule("model", languageModel.Model);
        RegisterModule("score", new Linear(languageModel.Config.HiddenSize, 1, false, generator, w.DType.IsFloat() ? w.DType : DType.F32, w.Device));
        Train(languageModel.Training);
    }

    /// <summary>The language model whose decoder stack this model scores with (its lm_head is unused).</summary>
    public LlamaForCausalLM LanguageModel { get; }

    /// <summary>The head: Linear(C, 1), weight [1, C].</summary>
    public Linear Score => Child<Linear>("score");

    /// <summary>
    /// ids (B, T) int32, right-padded, and each row's real length -> rewards [B]: the score of the hidden
    /// state at position length - 1 of each row.
    /// </summary>
    public Tensor Forward(Tensor ids, IReadOnlyList<int> lengths)
    {
        ArgumentNullException.ThrowIfNull(lengths);
        int b = ids.Size(0), t = ids.Size(1);
        if (lengths.Count != b) throw new ArgumentException($"reward model: {lengths.Count} lengths for a batch of {b} rows");
        var h = LanguageModel.HiddenStates(ids);                // (B, T, C)
        var last = new Tensor[b];
        for (int i = 0; i < b; i++)
        {
            if (lengths[i] < 1 || lengths[i] > t) throw new ArgumentException($"reward model: row {i} has length {lengths[i]}, outside 1..{t}");
            last[i] = h.Narrow(0, i, 1).Narrow(1, lengths[i] - 1, 1).Reshape(1, h.Size(2)); // (1, C)
        }
        var r = Score.Forward(Tensor.Concat(last, 0));         // (B, 1)
        return r.Reshape(b);
    }

    /// <summary>Rows right-padded with <paramref name="padId"/> (negative: 0), each cut to <paramref name="maxLength"/>: ids (B, T) and lengths.</summary>
    public static (Tensor Ids, int[] Lengths) Collate(IReadOnlyList<int[]> rows, int padId, int maxLength)
    {
        ArgumentNullException.ThrowIfNull(rows);
        if (rows.Count == 0) throw new ArgumentException("a batch needs at least one row", nameof(rows));
        ArgumentOutOfRangeException.ThrowIfLessThan(maxLength, 1);
        padId = Math.Max(padId, 0);
        var lengths = new int[rows.Count];
        int t = 1;
        for (int i = 0; i < rows.Count; i++)
        {
            if (rows[i].Length == 0) throw new ArgumentException($"row {i} of the batch is empty", nameof(rows));
            lengths[i] = Math.Min(rows[i].Length, maxLength);
            t = Math.Max(t, lengths[i]);
        }
        var ids = new int[rows.Count * t]; // (B, T)
        Array.Fill(ids, padId);
        for (int i = 0; i < rows.Count; i++) rows[i].AsSpan(0, lengths[i]).CopyTo(ids.AsSpan(i * t));
        return (Tensor.FromArray(ids, [rows.Count, t]), lengths);
    }

    /// <summary>Per-pair pairwise losses [B], softplus(r_rejected - r_chosen) = -log sigmoid(r_chosen - r_rejected).</summary>
    public static Tensor PairwiseLoss(Tensor chosenRewards, Tensor rejectedRewards) => DpoLoss.Softplus(rejectedRewards - chosenRewards);

    /// <summary>True when <paramref name="dir"/> holds a saved reward model (its marker file).</summary>
    public static bool IsRewardModelDirectory(string dir) => Directory.Exists(dir) && File.Exists(Path.Combine(dir, MarkerFileName));

    /// <summary>
    /// Writes the model to <paramref name="dir"/> (see the file header), each file atomically, the marker last.
    /// LoRA adapters on the trunk must have been merged (<see cref="Lora.Lora.Merge"/>) first.
    /// </summary>
    public void Save(string dir)
    {
        if (Lora.Lora.AdaptedLayers(LanguageModel).Count > 0)
            throw new InvalidOperationException("merge the reward model's LoRA adapters (Lora.Merge) before saving it");
        Directory.CreateDirectory(dir);
        var weights = LanguageModel.StateDict().ToDictionary(p => p.Key, p => p.Value.Detach());
        var meta = new Dictionary<string, string> { ["format"] = "pt" };
        SaveAtomically(Path.Combine(dir, Checkpoint.SafetensorsName), path => Safetensors.Save(path, weights, meta));
        SaveAtomically(Path.Combine(dir, ScoreFileName), path => Safetensors.Save(path, new Dictionary<string, Tensor> { ["score.weight"] = Score.Weight.Detach() }, meta));
        SaveAtomically(Path.Combine(dir, Checkpoint.ConfigName), path => File.WriteAllText(path, LanguageModel.Config.ToJson()));
        var marker = new JsonObject { ["kind"] = Kind, ["score"] = ScoreFileName, ["hidden_size"] = LanguageModel.Config.HiddenSize };
        SaveAtomically(Path.Combine(dir, MarkerFileName), path => File.WriteAllText(path, marker.ToJsonString(new JsonSerializerOptions { WriteIndented = true })));
    }

    private static void SaveAtomically(string path, Action<string> write)
    {
        string partial = path + ".partial";
        write(partial);
        File.Move(partial, path, overwrite: true);
    }

    /// <summary>
    /// Puts a saved reward model's head on <paramref name="languageModel"/> (its trunk, loaded from the same
    /// directory by the usual model loader). A missing or malformed marker or head is a one-line
    /// <see cref="InvalidDataException"/> naming the file.
    /// </summary>
    public static RewardModel Load(string dir, LlamaForCausalLM languageModel)
    {
        ArgumentNullException.ThrowIfNull(languageModel);
        string markerPath = Path.Combine(dir, MarkerFileName);
        if (!File.Exists(markerPath)) throw new InvalidDataException($"{dir}: not a reward model directory ({MarkerFileName} is missing)");
        if (new FileInfo(markerPath).Length > 1 << 16) throw new InvalidDataException($"{markerPath}: larger than a reward model marker can be");
        string scoreName;
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllBytes(markerPath));
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object || !root.TryGetProperty("kind", out var kind) || kind.ValueKind != JsonValueKind.String || kind.GetString() != Kind)
                throw new InvalidDataException($"{markerPath}: field \"kind\" must be \"{Kind}\"");
            if (!root.TryGetProperty("score", out var score) || score.ValueKind != JsonValueKind.String)
                throw new InvalidDataException($"{markerPath}: field \"score\" must be a file name");
            scoreName = score.GetString()!;
            if (scoreName.Length == 0 || Path.GetFileName(scoreName) != scoreName)
                throw new InvalidDataException($"{markerPath}: field \"score\" must name a file in the directory, not {MessageText.Quote(scoreName)}");
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException)
        {
            throw new InvalidDataException($"{markerPath}: malformed JSON ({e.Message.ReplaceLineEndings(" ")})");
        }
        string scorePath = Path.Combine(dir, scoreName);
        if (!File.Exists(scorePath)) throw new InvalidDataException($"{markerPath}: the score head {scorePath} is missing");
        var file = SafetensorsFile.Open(scorePath);
        if (!file.Contains("score.weight")) throw new InvalidDataException($"{scorePath}: tensor \"score.weight\" is missing");
        var info = file.GetInfo("score.weight");
        int c = languageModel.Config.HiddenSize;
        if (!info.Shape.AsSpan().SequenceEqual([1, c]) || !info.DType.IsFloat())
            throw new InvalidDataException($"{scorePath}: tensor \"score.weight\" is {info.DType.Name()} {Shapes.Format(info.Shape)}, expected a float [1, {c}]");
        var weight = file.Get("score.weight").To(DType.F32);
        foreach (var x in weight.ToArray<float>())
            if (!float.IsFinite(x)) throw new InvalidDataException($"{scorePath}: tensor \"score.weight\" holds {x} (values must be finite)");
        var model = new RewardModel(languageModel);
        using (GradMode.NoGrad()) model.Score.Weight.CopyFrom_(weight.To(model.Score.Weight.DType).To(model.Score.Weight.Device));
        return model;
    }
}

/// <summary>
/// Scores (prompt, response) pairs with a reward model and its tokenizer: what a pairwise judge calls
/// (e.g. <c>new ScoreJudge("reward", scorer.Score)</c>).
/// </summary>
public sealed class RewardScorer
{
    private readonly RewardModel model;
    private readonly TextEncoder encoder;
    private readonly int maxLength, padId;

    /// <summary>A scorer over <paramref name="model"/>; sequences are cut to <paramref name="maxLength"/> tokens.</summary>
    public RewardScorer(RewardModel model, LlamaTokenizer tokenizer, int maxLength)
        : this(model, TextEncoder.From(tokenizer), maxLength, SftDataLoader.InputPadId(tokenizer))
    {
    }

    internal RewardScorer(RewardModel model, TextEncoder encoder, int maxLength, int padId)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentOutOfRangeException.ThrowIfLessThan(maxLength, 2);
        this.model = model;
        this.encoder = encoder;
        this.maxLength = Math.Min(maxLength, model.LanguageModel.Config.MaxPositionEmbeddings);
        this.padId = padId;
    }

    /// <summary>The reward of <paramref name="response"/> to <paramref name="prompt"/>.</summary>
    public double Score(string prompt, string response) => Score([(prompt, response)], 1)[0];

    /// <summary>The rewards of many (prompt, response) pairs, <paramref name="batchSize"/> sequences per forward pass.</summary>
    public double[] Score(IReadOnlyList<(string Prompt, string Response)> items, int batchSize = 8)
    {
        ArgumentNullException.ThrowIfNull(items);
        ArgumentOutOfRangeException.ThrowIfLessThan(batchSize, 1);
        var rows = items.Select(x => AlpacaTemplate.TokenizeText(encoder, x.Prompt, x.Response, "").InputIds).ToList();
        return RewardObjective.Rewards(model, rows, batchSize, padId, maxLength);
    }
}
