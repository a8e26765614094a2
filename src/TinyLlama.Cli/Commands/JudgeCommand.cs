// `tinyllama judge`: compare two models' answers question by question with a pairwise judge, each pair
// judged twice with the answers' positions swapped and a verdict counted only when both orders agree
// (Vicuna's and MT-bench's pairwise grading; TinyLlama.Training/Judging/PairwiseJudging.cs). Judges:
//   --judge exact            the answer equal to the question's reference "answer" wins;
//   --judge http(s)://HOST   a chat model behind an OpenAI-compatible endpoint (--judge-model names it; the
//                            OPENAI_API_KEY environment variable, if set, is sent as the bearer token);
//   --judge DIR              a reward model (`tinyllama reward train`): the answer it scores higher, the
//                            question being the prompt and the answer the response (as its pairs were).
using System.CommandLine;
using System.Text.Json.Nodes;
using TinyLlama.Training.Judging;
using TinyLlama.Training.Preferences;

namespace TinyLlama.Cli.Commands;

internal static class JudgeCommand
{
    public static Command Create()
    {
        var questions = new Option<string>("--questions") { Description = "Questions, JSON Lines: {\"id\", \"question\", \"answer\" (reference, for --judge exact)}", Required = true };
        var answersA = new Option<string>("--answers-a") { Description = "Model A's answers, JSON Lines: {\"id\", \"answer\"}", Required = true };
        var answersB = new Option<string>("--answers-b") { Description = "Model B's answers, JSON Lines: {\"id\", \"answer\"}", Required = true };
        var judge = new Option<string>("--judge") { Description = "exact, an http(s):// OpenAI-compatible endpoint, or a reward-model directory", Required = true };
        var judgeModel = new Option<string>("--judge-model") { Description = "Model name sent to an http(s) judge endpoint (default \"default\")", DefaultValueFactory = _ => "default" };
        var json = new Option<bool>("--json") { Description = "Print one JSON object: counts and per-question verdicts" };
        var cmd = new Command("judge", "Compare two sets of answers with a pairwise judge, each pair judged in both orders.")
        {
            questions, answersA, answersB, judge, judgeModel, json,
        };
        cmd.SetAction(parse =>
        {
            string judgeName = parse.GetValue(judge)!;
            string qPath = parse.GetValue(questions)!, aPath = parse.GetValue(answersA)!, bPath = parse.GetValue(answersB)!;
            TextFileOption.RequireFile(qPath, "--questions");
            TextFileOption.RequireFile(aPath, "--answers-a");
            TextFileOption.RequireFile(bPath, "--answers-b");
            var qs = JudgeFiles.ReadQuestions(qPath);
            var a = JudgeFiles.ReadAnswers(aPath, qPath, qs);
            var b = JudgeFiles.ReadAnswers(bPath, qPath, qs);
            using var endpoint = IsUrl(judgeName) ? Endpoint(judgeName, parse.GetValue(judgeModel)!) : null;
            IPairwiseJudge pairwise = judgeName == "exact" ? Exact(qs, qPath)
                : endpoint is not null ? new OpenAiEndpointJudge(endpoint, judgeName)
                : RewardModelJudge(judgeName, parse);
            var result = PairwiseJudging.Run(pairwise, qs, a, b);
            Print(parse.InvocationConfiguration.Output, parse.GetValue(json), pairwise.Name, result);
            return ExitCodes.Success;
        });
        return cmd;
    }

    private static bool IsUrl(string judge) =>
        judge.StartsWith("http://", StringComparison.OrdinalIgnoreCase) || judge.StartsWith("https://", StringComparison.OrdinalIgnoreCase);

    private static HttpChatEndpoint Endpoint(string url, string model)
    {
        if (!Uri.TryCreate(url, UriKind.Absolute, out var uri)) throw new CliException($"--judge: '{url}' is not a valid URL", isUsage: true);
        string? key = Environment.GetEnvironmentVariable("OPENAI_API_KEY");
        return new HttpChatEndpoint(uri, model, string.IsNullOrEmpty(key) ? null : key);
    }

    private static ExactMatchJudge Exact(IReadOnlyList<JudgeQuestion> questions, string path)
    {
        try { return new ExactMatchJudge(questions); }
        catch (ArgumentException e) { throw new CliException($"--judge exact: {path}: {e.Message}"); }
    }

    // A reward model directory as a judge: higher reward wins (ScoreJudge), sequences cut to the model's context.
    private static ScoreJudge RewardModelJudge(string path, ParseResult parse)
    {
        if (!File.Exists(path) && !Directory.Exists(path))
            throw new CliException($"--judge: {path} does not exist; expected exact, an http(s):// endpoint or a reward-model directory", isUsage: true);
        if (!RewardModel.IsRewardModelDirectory(path))
            throw new CliException($"--judge {path}: not a reward model directory (no {RewardModel.MarkerFileName}; train one with 'tinyllama reward train'), nor exact or an http(s):// endpoint");
        var files = new ModelFiles();
        var lm = ModelCommands.LoadModel(path, files, DeviceOption.Resolve(parse), flag: "--judge");
        var reward = RewardModel.Load(path, lm);
        var scorer = new RewardScorer(reward, ModelCommands.LoadTokenizer(path, null, files), lm.Config.MaxPositionEmbeddings);
        return new ScoreJudge($"reward model {path}", scorer.Score);
    }

    private static void Print(TextWriter output, bool json, string judge, PairwiseResult result)
    {
        if (json)
        {
            var verdicts = new JsonArray();
            foreach (var v in result.Verdicts)
                verdicts.Add(new JsonObject { ["id"] = v.Id, ["verdict"] = Word(v.Verdict), ["a_first"] = Word(v.First), ["b_first"] = Word(v.Swapped) });
            output.WriteLine(JsonLine.Format(("judge", judge), ("wins", result.Wins), ("ties", result.Ties), ("losses", result.Losses),
                ("inconsistent", result.Inconsistent), ("verdicts", verdicts)));
            return;
        }
        foreach (var v in result.Verdicts)
            output.WriteLine($"{v.Id}: {Word(v.Verdict)} (A first: {Word(v.First)}; B first: {Word(v.Swapped)}{(v.Inconsistent ? "; the orders disagree" : "")})");
        output.WriteLine($"A wins {result.Wins}, ties {result.Ties}, B wins {result.Losses} of {result.Verdicts.Count} questions " +
            $"(judge {judge}, both orders; {result.Inconsistent} ties from orders that disagreed)");
    }

    // A verdict in A/B terms as printed: "A", "B" or "tie".
    private static string Word(Preference p) => p == Preference.Tie ? "tie" : p.ToString();
}
