// The program of the README's "Use it from C#" section, kept compiling and running here: the README quotes the
// lines between the markers word for word (ReadmeSampleTests checks that), and the test runs it on
// ../shared/reference/tiny-random-llama. Only public API of the packages, as a library user sees it.
using Microsoft.Extensions.AI;
using TinyLlama.Formats;
using TinyLlama.Generation;
using TinyLlama.Model;
using TinyLlama.Serving;
using TinyLlama.Tensors;
using TinyLlama.Tokenizers;
using TinyLlama.Training.Data;
using TinyLlama.Training.Lora;
using TinyLlama.Training.Trainer;

namespace TinyLlama.Tests.Packaging;

internal static class ReadmeSample
{
    /// <summary>Runs the sample on the model directory, the Alpaca JSON file and an output folder; writes what it prints.</summary>
    public static void Run(string modelPath, string dataPath, string adapterDir, TextWriter output)
    {
        var Console = output;
        // README sample begins
        // Load a model: a Hugging Face directory, a .gguf file or a llama2.c .bin (with its tokenizer).
        var checkpoint = Checkpoint.Load(modelPath);
        var model = LlamaForCausalLM.FromWeights(checkpoint.Config, checkpoint.Weights);
        var tokenizer = LlamaTokenizer.Load(modelPath);
        model.Eval();

        // Generate: ids stream out as they are chosen.
        int[] prompt = tokenizer.Encode("Once upon a time", addBos: true);
        var ids = TextGenerator.Generate(model, prompt, maxNewTokens: 16, SamplingOptions.Greedy).ToList();
        Console.WriteLine(tokenizer.Decode(ids));

        // Chat: a conversation in one KV cache, in a chat format by name (alpaca, vicuna, chatml, raw).
        using (var chat = new ChatSession(model, ChatTemplates.Create("alpaca", tokenizer), SamplingOptions.Greedy, maxAnswerTokens: 16))
            Console.WriteLine(chat.Respond("Name a primary color.").Text);

        // IChatClient (Microsoft.Extensions.AI): requests batched over the model, as `tinyllama serve` runs them.
        using (var scheduler = new BatchScheduler(model, tokenizer, new SchedulerOptions(Parallel: 2, ContextSize: 256)))
        {
            IChatClient client = new TinyLlamaChatClient(scheduler, system => ChatTemplates.Create("alpaca", tokenizer, system), "my-model");
            var options = new ChatOptions { MaxOutputTokens = 16, Temperature = 0 };
            Console.WriteLine(client.GetResponseAsync("Name a primary color.", options).GetAwaiter().GetResult().Text);
        }

        // Fine-tune rank-8 LoRA adapters on every projection (the base is frozen), then save them as PEFT does.
        var lora = new LoraConfig(Rank: 8, Alpha: 16, Dropout: 0, TargetModules: LoraConfig.AllTargets);
        Lora.Apply(model, lora, new Generator(0));
        var data = SftDataset.Load(dataPath, SftFormat.Alpaca, tokenizer, maxLength: 128);
        var loader = new SftDataLoader(data.Examples, batchSize: 2, shuffle: true, seed: 0, SftDataLoader.InputPadId(tokenizer), data.MaxLength);
        var trainer = new SftTrainer(model, loader, new SftOptions { Steps = 10, Lr = 1e-3 });
        for (int step = 0; step < 10; step++)
            Console.WriteLine($"step {trainer.TrainStep().Step}: loss {trainer.History[^1].Loss:F4}");
        PeftAdapter.Save(adapterDir, model, lora, baseModelPath: modelPath);
        // README sample ends
    }
}
