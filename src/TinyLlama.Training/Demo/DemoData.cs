// From demo items to what the tokenizer trainer and the trainer eat:
//   - the tokenizer corpus: every text the run will ever encode (pre-training documents, Alpaca
//     prompts and answers of the training items); the test items are left out of it too;
//   - pre-training documents: a few fact sentences per document, one per line, as plain text:
//     BOS + encode(text) + EOS with every token a target (ordinary language modelling, no template);
//   - instruction records: the Alpaca template (AlpacaTemplate.Tokenize), only the response and its
//     EOS as targets.
// Both kinds are SftExamples, so one SftTrainer runs the full pre-training and the LoRA fine-tuning.
using TinyLlama.Tensors;
using TinyLlama.Tokenizers;
using TinyLlama.Training.Data;

namespace TinyLlama.Training.Demo;

/// <summary>Builds the demo's corpora.</summary>
public static class DemoData
{
    /// <summary>
    /// The pre-training documents: the training items' fact sentences in a seeded random order, cut into
    /// documents of <paramref name="factsPerDocument"/> lines.
    /// </summary>
    public static IReadOnlyList<string> PretrainingDocuments(IReadOnlyList<DemoTask> train, int factsPerDocument, ulong seed)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(factsPerDocument, 1);
        var order = Shuffling.Permutation(train.Count, new Generator(seed ^ 0xD0C5));
        var documents = new List<string>();
        for (int start = 0; start < order.Length; start += factsPerDocument)
        {
            var lines = new List<string>(factsPerDocument);
            for (int i = start; i < Math.Min(start + factsPerDocument, order.Length); i++) lines.Add(train[order[i]].Fact);
            documents.Add(string.Join('\n', lines));
        }
        return documents;
    }

    /// <summary>Every text the tokenizer should learn from: the documents and the training items' Alpaca prompts and outputs.</summary>
    public static IEnumerable<string> TokenizerCorpus(IReadOnlyList<string> documents, IReadOnlyList<DemoTask> train)
    {
        foreach (var d in documents) yield return d;
        foreach (var t in train) yield return AlpacaTemplate.Prompt(t.Instruction, t.Input) + t.Output;
    }

    /// <summary>A plain-text document as a language-modelling example: BOS + encode(text) + EOS, every token a target.</summary>
    public static SftExample Document(LlamaTokenizer tokenizer, string text, string source)
    {
        var ids = tokenizer.Encode(text, addBos: true, addEos: true);
        return new SftExample(ids, (int[])ids.Clone(), source);
    }

    /// <summary>An item as an Alpaca instruction record (prompt masked, response + EOS trained).</summary>
    public static SftExample Instruction(LlamaTokenizer tokenizer, DemoTask task, string source) =>
        AlpacaTemplate.Tokenize(tokenizer, task.Instruction, task.Input, task.Output, source: source);
}
