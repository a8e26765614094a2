// `tinyllama reward train` and `tinyllama reward score`: a reward model (LLaMA + a scalar head on the last
// token; Training/Preferences/RewardModel.cs) trained on {"prompt", "chosen", "rejected"} pairs with
// -log sigmoid(r_chosen - r_rejected), full or LoRA (merged into the saved weights), with sft's optimizer
// flags, checkpoints and --resume; held-out loss and accuracy with --val-fraction. `score` prints each
// pair's rewards and the accuracy. With --json, train prints one line per step, {"step", "loss",
// "rewards/chosen", "rewards/rejected", "rewards/margins", "accuracy", "lr", "tokens_per_second"}, and
// {"eval_loss", "eval_accuracy", "pairs"} for the held-out pairs; score prints {"source", "chosen",
// "rejected", "margin"} per pair and {"accuracy", "pairs"} at the end.
using System.CommandLine;
using System.Globalization;
using TinyLlama.Tensors;
using TinyLlama.Training.Lora;
using TinyLlama.Training.Preferences;
using TinyLlama.Training.Trainer;

namespace TinyLlama.Cli.Commands;

internal static class RewardCommand
{
    public static Command Create()
    {
        var cmd = new Command("reward", "Train a reward model on preference pairs, or score pairs with one.");
        cmd.Subcommands.Add(Train());
        cmd.Subcommands.Add(Score());
        return cmd;
    }

    private static Command Train()
    {
        var flags = new PreferenceTraining("Output directory (reward model: config.json, model.safetensors, score.safetensors, reward_model.json; checkpoint/ inside)",
            "One JSON line per step: step, loss, rewards/chosen, rewards/rejected, rewards/margins, accuracy, lr, tokens_per_second");
        var cmd = new Command("train", "Train a reward model (LLaMA + a scalar head) on preference pairs.");
        flags.AddTo(cmd);
        cmd.SetAction(parse =>
        {
            TinyLlama.Cli.Distributed.DataParallelFlags.RefuseUnderMpi("reward train");
            var run = flags.Load(parse);
            var output = parse.InvocationConfiguration.Output;
            var model = new RewardModel(run.Model, new Generator(run.Seed ^ 0x5C0E));
            var objective = new RewardObjective(model, new PreferenceDataLoader(run.Train, run.BatchSize, run.Shuffle, run.Seed), run.PadId, run.MaxLength);
            var trainer = new SftTrainer(model, objective, run.Options, rng: run.Rng);
            if (!run.AsJson)
                output.WriteLine($"{run.Data.Summary()}; {run.Train.Count} train / {run.HeldOut.Count} held out; {trainer.Trainable.Sum(p => (long)p.Param.Numel):N0} trainable parameters; {run.Options.Steps} steps");
            PreferenceTraining.Loop(run, trainer, log => output.WriteLine(run.AsJson ? PreferenceTraining.JsonStep(log) : PreferenceTraining.TextStep(log, run.Options.Steps)));
            if (run.HeldOut.Count > 0)
            {
                var (loss, accuracy) = RewardObjective.Evaluate(model, run.HeldOut, run.BatchSize, run.PadId, run.MaxLength);
                output.WriteLine(run.AsJson
                    ? JsonLine.Format(("eval_loss", loss), ("eval_accuracy", accuracy), ("pairs", run.HeldOut.Count))
                    : string.Create(CultureInfo.InvariantCulture, $"held-out loss {loss:F4}, accuracy {accuracy:P1} over {run.HeldOut.Count} pairs"));
            }
            Lora.Merge(run.Model); // the saved reward model is whole: base weights with the adapters folded in
            model.Save(run.OutPath);
            SftCommand.CopyTokenizer(run.OutPath, parse.GetValue(flags.Model)!, parse.GetValue(flags.Tokenizer));
            if (!run.AsJson) output.WriteLine($"wrote reward model to {run.OutPath} (resumable checkpoint in {Path.Combine(run.OutPath, "checkpoint")})");
            return ExitCodes.Success;
        });
        return cmd;
    }

    private static Command Score()
    {
        var model = ModelCommands.ModelOption();
        var tokenizer = ModelCommands.TokenizerOption();
        var data = new Option<string>("--data") { Description = "Preference pairs: JSON Lines or a JSON array of {\"prompt\", \"chosen\", \"rejected\"}", Required = true };
        var batchSize = new Option<int>("--batch-size") { Description = "Sequences per forward pass", DefaultValueFactory = _ => 8 };
        var maxLength = new Option<int?>("--max-length") { Description = "Truncate each sequence to this many tokens (default: the model's context)" };
        var json = new Option<bool>("--json") { Description = "One JSON line per pair, {\"source\", \"chosen\", \"rejected\", \"margin\"}, then {\"accuracy\", \"pairs\"}" };
        var cmd = new Command("score", "Print the rewards a reward model gives each pair's responses, and its accuracy.")
        {
            model, tokenizer, data, batchSize, maxLength, json,
        };
        cmd.SetAction(parse =>
        {
            int b = OptionRange.Check("--batch-size", parse.GetValue(batchSize), 1, 1 << 20);
            if (parse.GetValue(maxLength) is int ml) OptionRange.Check("--max-length", ml, 2);
            string modelPath = parse.GetValue(model)!, dataPath = parse.GetValue(data)!;
            TextFileOption.RequireFile(dataPath, "--data");
            if (!RewardModel.IsRewardModelDirectory(modelPath))
                throw new CliException($"--model: {modelPath} is not a reward model directory (no {RewardModel.MarkerFileName}; train one with 'tinyllama reward train')");
            var files = new ModelFiles();
            var lm = ModelCommands.LoadModel(modelPath, files, DeviceOption.Resolve(parse));
            var reward = RewardModel.Load(modelPath, lm);
            var tok = ModelCommands.LoadTokenizer(modelPath, parse.GetValue(tokenizer), files);
            int maxLen = parse.GetValue(maxLength) is int m ? Math.Min(m, lm.Config.MaxPositionEmbeddings) : lm.Config.MaxPositionEmbeddings;
            var pairs = PreferenceData.Tokenize(PreferenceData.Read(dataPath), tok, maxLen);
            if (pairs.Pairs.Count == 0) throw new CliException($"{dataPath}: no usable pairs ({pairs.Summary()})");
            var (chosen, rejected) = RewardObjective.PairRewards(reward, pairs.Pairs, b, Training.Data.SftDataLoader.InputPadId(tok), maxLen);
            var output = parse.InvocationConfiguration.Output;
            bool asJson = parse.GetValue(json);
            int correct = 0;
            for (int i = 0; i < chosen.Length; i++)
            {
                double margin = chosen[i] - rejected[i];
                if (margin > 0) correct++;
                output.WriteLine(asJson
                    ? JsonLine.Format(("source", pairs.Pairs[i].Source), ("chosen", chosen[i]), ("rejected", rejected[i]), ("margin", margin))
                    : string.Create(CultureInfo.InvariantCulture, $"{pairs.Pairs[i].Source}  chosen {chosen[i]:F4}  rejected {rejected[i]:F4}  margin {margin:+0.0000;-0.0000}"));
            }
            double accuracy = (double)correct / chosen.Length;
            output.WriteLine(asJson
                ? JsonLine.Format(("accuracy", accuracy), ("pairs", chosen.Length))
                : string.Create(CultureInfo.InvariantCulture, $"accuracy {accuracy:P1} over {chosen.Length} pairs ({pairs.Summary()})"));
            return ExitCodes.Success;
        });
        return cmd;
    }
}
