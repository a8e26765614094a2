// The pairwise judge: the position-swap rule (a judge biased to the first position yields only ties; a
// consistent judge's verdicts count), the exact-match and score judges, the chat-endpoint judge's prompt and
// verdict parsing over a fake endpoint, and the HTTP endpoint over a fake message handler (no network).
using System.Net;
using System.Text.Json;
using TinyLlama.Training.Judging;

namespace TinyLlama.Tests.Judging;

public class PairwiseJudgingTests
{
    private static readonly JudgeQuestion[] Questions = [new("q1", "2 + 2?", "4"), new("q2", "Capital of France?", "Paris"), new("q3", "3 * 3?", "9")];

    private sealed class FakeJudge(Func<string, string, string, Preference> compare) : IPairwiseJudge
    {
        public string Name => "fake";
        public int Calls { get; private set; }
        public Preference Compare(string question, string answerA, string answerB)
        {
            Calls++;
            return compare(question, answerA, answerB);
        }
    }

    private static Dictionary<string, string> Answers(params string[] answers) =>
        Questions.Select((q, i) => (q.Id, answers[i])).ToDictionary(x => x.Id, x => x.Item2);

    [Fact]
    public void AJudgeThatAlwaysPrefersTheFirstPositionGivesOnlyTies()
    {
        var judge = new FakeJudge((_, _, _) => Preference.A);
        var result = PairwiseJudging.Run(judge, Questions, Answers("4", "Paris", "9"), Answers("5", "Lyon", "6"));
        Assert.Equal(6, judge.Calls);                                   // every pair twice
        Assert.Equal((0, 3, 0, 3), (result.Wins, result.Ties, result.Losses, result.Inconsistent));
        Assert.All(result.Verdicts, v => Assert.Equal((Preference.A, Preference.B, Preference.Tie), (v.First, v.Swapped, v.Verdict)));
    }

    [Fact]
    public void AConsistentJudgesVerdictsCountAndDisagreementsAreTies()
    {
        // Prefers the longer answer; equal lengths tie.
        var longer = new FakeJudge((_, a, b) => a.Length > b.Length ? Preference.A : b.Length > a.Length ? Preference.B : Preference.Tie);
        var result = PairwiseJudging.Run(longer, Questions, Answers("four", "Paris", "9"), Answers("4", "Lyons", "nine"));
        Assert.Equal(["q1", "q2", "q3"], result.Verdicts.Select(v => v.Id));
        Assert.Equal([Preference.A, Preference.Tie, Preference.B], result.Verdicts.Select(v => v.Verdict));
        Assert.Equal((1, 1, 1, 0), (result.Wins, result.Ties, result.Losses, result.Inconsistent));

        // A tie in one order and a preference in the other is a tie.
        int call = 0;
        var halfHearted = new FakeJudge((_, _, _) => call++ % 2 == 0 ? Preference.A : Preference.Tie);
        var v = PairwiseJudging.Judge(halfHearted, Questions[0], "x", "y");
        Assert.Equal((Preference.A, Preference.Tie, Preference.Tie, true), (v.First, v.Swapped, v.Verdict, v.Inconsistent));
    }

    [Fact]
    public void MissingAnswersAreNamed()
    {
        var judge = new FakeJudge((_, _, _) => Preference.Tie);
        var e = Assert.Throws<ArgumentException>(() => PairwiseJudging.Run(judge, Questions, Answers("4", "Paris", "9"), new Dictionary<string, string> { ["q1"] = "4" }));
        Assert.Contains("answers B have no answer for question \"q2\"", e.Message);
    }

    [Fact]
    public void ExactMatchPrefersTheReferenceAndTiesOtherwise()
    {
        var judge = new ExactMatchJudge(Questions);
        Assert.Equal(Preference.A, judge.Compare("2 + 2?", " 4\n", "5"));     // trimmed
        Assert.Equal(Preference.B, judge.Compare("2 + 2?", "5", "4"));
        Assert.Equal(Preference.Tie, judge.Compare("2 + 2?", "4", "4"));
        Assert.Equal(Preference.Tie, judge.Compare("2 + 2?", "3", "5"));
        Assert.Equal(Preference.Tie, judge.Compare("Capital of France?", "paris", "PARIS")); // exact: case counts
        var result = PairwiseJudging.Run(judge, Questions, Answers("4", "Lyon", "9"), Answers("5", "Paris", "9"));
        Assert.Equal((1, 1, 1, 0), (result.Wins, result.Ties, result.Losses, result.Inconsistent));
        Assert.Contains("\"q9\"", Assert.Throws<ArgumentException>(() => new ExactMatchJudge([new("q9", "?", null)])).Message);
        Assert.Throws<ArgumentException>(() => new ExactMatchJudge([new("a", "same?", "1"), new("b", "same?", "2")]));
    }

    [Fact]
    public void ScoreJudgePrefersTheHigherScoreAndRefusesNaN()
    {
        var judge = new ScoreJudge("length", (_, answer) => answer.Length);
        Assert.Equal(Preference.A, judge.Compare("q", "long answer", "short"));
        Assert.Equal(Preference.B, judge.Compare("q", "short", "long answer"));
        Assert.Equal(Preference.Tie, judge.Compare("q", "same", "size"));
        var nan = new ScoreJudge("broken", (_, _) => double.NaN);
        Assert.Contains("broken", Assert.Throws<InvalidDataException>(() => nan.Compare("q", "a", "b")).Message);
    }

    // ---------------- a chat model as the judge ----------------

    private sealed class FakeEndpoint(Func<IReadOnlyList<ChatMessage>, string> reply) : IChatEndpoint
    {
        public List<IReadOnlyList<ChatMessage>> Seen { get; } = [];
        public string Complete(IReadOnlyList<ChatMessage> messages)
        {
            Seen.Add(messages);
            return reply(messages);
        }
    }

    [Theory]
    [InlineData("A is clearly better. [[A]]", Preference.A)]
    [InlineData("Verdict: [[B]]", Preference.B)]
    [InlineData("Both fine [[C]]", Preference.Tie)]
    [InlineData("I cannot decide.", null)]
    [InlineData("[[A]] or maybe [[B]]", null)]
    [InlineData("[A] [[a]]", null)]
    public void VerdictTagsParse(string reply, Preference? expected) => Assert.Equal(expected, OpenAiEndpointJudge.ParseVerdict(reply));

    [Fact]
    public void EndpointJudgeSendsBothAnswersInOrderAndReadsTheTag()
    {
        // A fake model that prefers whichever answer holds "right", wherever it stands.
        var endpoint = new FakeEndpoint(m =>
        {
            string user = m[1].Content;
            int a = user.IndexOf("[The Start of Assistant A's Answer]", StringComparison.Ordinal), b = user.IndexOf("[The Start of Assistant B's Answer]", StringComparison.Ordinal);
            return user.IndexOf("right", a, b - a, StringComparison.Ordinal) >= 0 ? "[[A]]" : user.IndexOf("right", b, StringComparison.Ordinal) >= 0 ? "[[B]]" : "no verdict";
        });
        var judge = new OpenAiEndpointJudge(endpoint);
        var result = PairwiseJudging.Run(judge, Questions, Answers("right", "wrong", "meh"), Answers("wrong", "right", "meh"));
        Assert.Equal([Preference.A, Preference.B, Preference.Tie], result.Verdicts.Select(v => v.Verdict));
        Assert.Equal(0, result.Inconsistent);
        var first = endpoint.Seen[0];
        Assert.Equal(("system", OpenAiEndpointJudge.SystemPrompt), (first[0].Role, first[0].Content));
        Assert.Equal("user", first[1].Role);
        Assert.StartsWith("[Question]\n2 + 2?\n\n[The Start of Assistant A's Answer]\nright\n[The End of Assistant A's Answer]", first[1].Content);
        Assert.Contains("[The Start of Assistant A's Answer]\nwrong\n", endpoint.Seen[1][1].Content);   // the swapped order
    }

    private sealed class FakeHandler(Func<HttpRequestMessage, HttpResponseMessage> respond) : HttpMessageHandler
    {
        public List<(HttpRequestMessage Request, string Body)> Requests { get; } = [];
        protected override HttpResponseMessage Send(HttpRequestMessage request, CancellationToken cancellationToken)
        {
            Requests.Add((request, request.Content!.ReadAsStringAsync(cancellationToken).Result));
            return respond(request);
        }
        protected override Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken) => Task.FromResult(Send(request, cancellationToken));
    }

    private static HttpResponseMessage Json(string body, HttpStatusCode code = HttpStatusCode.OK) =>
        new(code) { Content = new StringContent(body, System.Text.Encoding.UTF8, "application/json") };

    [Fact]
    public void HttpEndpointPostsChatCompletionsAndReadsTheReply()
    {
        var handler = new FakeHandler(_ => Json("{\"choices\": [{\"message\": {\"role\": \"assistant\", \"content\": \"Fine. [[B]]\"}}]}"));
        using var endpoint = new HttpChatEndpoint(new Uri("http://localhost:8080"), "judge-7b", "sk-test", new HttpClient(handler));
        Assert.Equal("Fine. [[B]]", endpoint.Complete([new("user", "hi \"there\"")]));
        var (request, body) = handler.Requests[0];
        Assert.Equal(HttpMethod.Post, request.Method);
        Assert.Equal("http://localhost:8080/v1/chat/completions", request.RequestUri!.ToString());
        Assert.Equal("Bearer sk-test", request.Headers.Authorization!.ToString());
        using var doc = JsonDocument.Parse(body);
        Assert.Equal("judge-7b", doc.RootElement.GetProperty("model").GetString());
        Assert.Equal("hi \"there\"", doc.RootElement.GetProperty("messages")[0].GetProperty("content").GetString());
        Assert.Equal(0, doc.RootElement.GetProperty("temperature").GetDouble());
        Assert.Equal("http://h/v1/chat/completions", new HttpChatEndpoint(new Uri("http://h/v1/"), "m", client: new HttpClient(handler)).Url.ToString());
    }

    [Theory]
    [InlineData("{\"choices\": []}", 200, "no choices[0].message.content")]
    [InlineData("not json", 200, "not JSON")]
    [InlineData("{\"error\": \"busy\"}", 503, "HTTP 503")]
    public void HttpEndpointFailuresAreOneLineNamingTheUrl(string body, int code, string expected)
    {
        using var endpoint = new HttpChatEndpoint(new Uri("http://judge.local"), "m", client: new HttpClient(new FakeHandler(_ => Json(body, (HttpStatusCode)code))));
        var e = Assert.Throws<InvalidDataException>(() => endpoint.Complete([new("user", "x")]));
        Assert.Contains("http://judge.local/v1/chat/completions", e.Message);
        Assert.Contains(expected, e.Message);
        Assert.DoesNotContain('\n', e.Message);
    }
}
