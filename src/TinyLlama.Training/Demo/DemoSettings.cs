// The sizes of the demo run: how much data, how large a tokenizer and model, how many steps. Two
// presets: Full (the `tinyllama demo` default, a few minutes on two CPU cores) and Quick (`--quick`,
// seconds, for tests and CI). The Full numbers were tuned on seed 0 and checked on other seeds (the
// figures are in README.md): the pre-trained model answers most held-out items when they are written as
// the plain sentences it was trained on, and the LoRA-tuned model answers them as Alpaca instructions.
using TinyLlama.Model;
using TinyLlama.Optim;
using TinyLlama.Training.Lora;

namespace TinyLlama.Training.Demo;

/// <summary>Sizes and hyper-parameters of a demo run.</summary>
public sealed record DemoSettings
{
    /// <summary>Training items per task family: each is one pre-training sentence.</summary>
    public required int TrainPerFamily { get; init; }
    /// <summary>Of those, the first this many per family are also written as Alpaca records for instruction tuning.</summary>
    public required int SftPerFamily { get; init; }
    /// <summary>Held-out test items per task family.</summary>
    public required int TestPerFamily { get; init; }
    /// <summary>BPE merges to learn (at most; training stops when no pair occurs twice).</summary>
    public required int Merges { get; init; }

    /// <summary>Residual width C.</summary>
    public required int HiddenSize { get; init; }
    /// <summary>SwiGLU hidden width.</summary>
    public required int IntermediateSize { get; init; }
    /// <summary>Decoder layers.</summary>
    public required int Layers { get; init; }
    /// <summary>Query heads NH.</summary>
    public required int Heads { get; init; }
    /// <summary>Key/value heads NKV (grouped-query attention when fewer than <see cref="Heads"/>).</summary>
    public required int KvHeads { get; init; }
    /// <summary>Context length.</summary>
    public int MaxPositions { get; init; } = 160;

    /// <summary>Pre-training sentences packed into one document.</summary>
    public int FactsPerDocument { get; init; } = 6;
    /// <summary>Full pre-training: optimizer steps, documents per batch, peak learning rate (cosine, with warmup).</summary>
    public required int PretrainSteps { get; init; }
    public int PretrainBatch { get; init; } = 16;
    public double PretrainLr { get; init; } = 3e-3;

    /// <summary>LoRA instruction tuning: optimizer steps, records per batch, peak learning rate (cosine, with warmup).</summary>
    public required int SftSteps { get; init; }
    public int SftBatch { get; init; } = 16;
    public double SftLr { get; init; } = 3e-3;
    /// <summary>LoRA rank, alpha and targets (every linear layer of every block).</summary>
    public int LoraRank { get; init; } = 8;
    public double LoraAlpha { get; init; } = 16;
    public IReadOnlyList<string> LoraTargets { get; init; } = LoraConfig.AllTargets;

    /// <summary>Most tokens a model may answer with (the longest answer is well under this).</summary>
    public int MaxAnswerTokens { get; init; } = 24;
    /// <summary>Held-out instructions shown in the chat at the end.</summary>
    public int ChatExamples { get; init; } = 5;

    /// <summary>The `tinyllama demo` run.</summary>
    public static DemoSettings Full { get; } = new()
    {
        TrainPerFamily = 8000, SftPerFamily = 600, TestPerFamily = 40, Merges = 400,
        HiddenSize = 64, IntermediateSize = 172, Layers = 2, Heads = 4, KvHeads = 2,
        PretrainSteps = 3000, PretrainLr = 5e-3, SftSteps = 2500, SftLr = 5e-3,
    };

    /// <summary>The `tinyllama demo --quick` run: the same story at toy size (well under a minute).</summary>
    public static DemoSettings Quick { get; } = new()
    {
        TrainPerFamily = 60, SftPerFamily = 60, TestPerFamily = 8, Merges = 200,
        HiddenSize = 48, IntermediateSize = 128, Layers = 2, Heads = 4, KvHeads = 2,
        PretrainSteps = 30, PretrainBatch = 8, SftSteps = 20, SftBatch = 8, ChatExamples = 3,
    };

    /// <summary>The model for a vocabulary of <paramref name="vocabSize"/> pieces (Llama 2 ids: BOS 1, EOS 2).</summary>
    public LlamaConfig ModelConfig(int vocabSize) => new()
    {
        VocabSize = vocabSize, HiddenSize = HiddenSize, IntermediateSize = IntermediateSize, NumHiddenLayers = Layers,
        NumAttentionHeads = Heads, NumKeyValueHeads = KvHeads, MaxPositionEmbeddings = MaxPositions,
        RmsNormEps = 1e-5, RopeTheta = 10000.0, TieWordEmbeddings = false, BosTokenId = 1, EosTokenId = 2,
    };

    /// <summary>The LoRA adapter configuration.</summary>
    public LoraConfig Lora => new(LoraRank, LoraAlpha, 0.0, LoraTargets);

    /// <summary>Full pre-training: AdamW, warmup then cosine decay, gradient clipping at 1.</summary>
    public Trainer.SftOptions PretrainOptions => new()
    {
        Steps = PretrainSteps, Lr = PretrainLr, Warmup = Math.Max(1, PretrainSteps / 20), Schedule = LrScheduleKind.Cosine, GradClip = 1.0,
    };

    /// <summary>LoRA fine-tuning: AdamW, warmup then cosine decay, gradient clipping at 1.</summary>
    public Trainer.SftOptions SftOptions => new()
    {
        Steps = SftSteps, Lr = SftLr, Warmup = Math.Max(1, SftSteps / 20), Schedule = LrScheduleKind.Cosine, GradClip = 1.0,
    };
}
