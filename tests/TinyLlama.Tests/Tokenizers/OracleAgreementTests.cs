// Agreement with an independent implementation: Microsoft.ML.Tokenizers' LlamaTokenizer (a C# port
// of SentencePiece BPE) loaded from the same tokenizer.model, configured as SentencePiece's own
// encode: no BOS/EOS, its normalisation (dummy prefix, '▁' escaping) on.
//
// A divergence found and documented here: when two candidate merges have the same score (the same
// piece at two places, as in "###" or "...."), SentencePiece (bpe_model.cc's comparator) merges the
// leftmost pair first; Microsoft.ML.Tokenizers 2.0.1 merges the rightmost. For "### Response" after
// a non-space, SentencePiece gives "##" "#" (cases.jsonl line 25 confirms), the oracle "#" "##".
// We follow SentencePiece. To show that this is the only difference, texts on which the two disagree
// must encode exactly like the oracle when our tokenizer is switched to rightmost ties.
using System.Text.Json;
using TinyLlama.Tests.Infrastructure;
using TinyLlama.Tokenizers;
using Xunit.Abstractions;
using Oracle = Microsoft.ML.Tokenizers.LlamaTokenizer;

namespace TinyLlama.Tests.Tokenizers;

public class OracleAgreementTests(ITestOutputHelper output)
{
    private static Oracle LoadOracle()
    {
        using var stream = File.OpenRead(SharedData.Require(TokenizerTestData.ModelPath));
        return Oracle.Create(stream, addBeginOfSentence: false, addEndOfSentence: false);
    }

    /// <summary>The Llama tokenizer with the oracle's tie rule (rightmost first).</summary>
    private static LlamaTokenizer LoadWithRightmostTies()
    {
        var model = SentencePieceModel.Load(SharedData.Require(TokenizerTestData.ModelPath));
        var options = LlamaTokenizer.FromSentencePieceModel(model).Options;
        return LlamaTokenizer.FromVocabulary(
            [.. model.Pieces.Select(p => p.Piece)], [.. model.Pieces.Select(p => p.Score)], [.. model.Pieces.Select(p => p.Type)],
            new TokenizerOptions
            {
                AddDummyPrefix = options.AddDummyPrefix, RemoveExtraWhitespaces = options.RemoveExtraWhitespaces,
                EscapeWhitespaces = options.EscapeWhitespaces, ByteFallback = options.ByteFallback,
                BosId = options.BosId, EosId = options.EosId, PadId = options.PadId, TiesGoRight = true,
            });
    }

    private static string Show(IEnumerable<int> ids) => "[" + string.Join(", ", ids) + "]";

    [SkippableFact]
    public void Oracle_AgreesWithSentencePiece_OnTheReferenceCasesWithoutTies()
    {
        // Establishes that the oracle is configured like SentencePiece before trusting it below, and
        // pins the documented divergence to the one case that has a tie ("\n\n### Response").
        var oracle = LoadOracle();
        Assert.True(oracle.AddDummyPrefix);
        var disagreeing = new List<int>();
        foreach (var c in TokenizerTestData.Cases())
        {
            var ids = oracle.EncodeToIds(c.Text, addBeginningOfSentence: false, addEndOfSentence: false);
            if (!c.Ids.SequenceEqual(ids)) disagreeing.Add(c.Line);
        }
        var tieCase = TokenizerTestData.Cases().Single(c => c.Text.Contains("### Response", StringComparison.Ordinal));
        Assert.Equal([tieCase.Line], disagreeing);
    }

    [SkippableFact]
    public void RandomTexts_EncodeLikeTheOracle_ExceptForTieBreaking_AndDecodeLikeIt()
    {
        var tok = TokenizerTestData.Llama();
        var rightmost = LoadWithRightmostTies();
        var oracle = LoadOracle();
        int agree = 0, tieOnly = 0;
        foreach (string text in TokenizerTestData.RandomTexts(400, seed: 2024))
        {
            var expected = oracle.EncodeToIds(text, addBeginningOfSentence: false, addEndOfSentence: false);
            int[] ids = tok.Encode(text);
            if (expected.SequenceEqual(ids)) agree++;
            else
            {
                int[] withOracleTies = rightmost.Encode(text);
                Assert.True(expected.SequenceEqual(withOracleTies),
                    $"{JsonSerializer.Serialize(text)}: oracle {Show(expected)}, ours {Show(ids)}, ours with rightmost ties {Show(withOracleTies)}");
                tieOnly++;
            }
            string oracleText = oracle.Decode(ids, considerSpecialTokens: false);
            Assert.True(oracleText == tok.Decode(ids), $"{JsonSerializer.Serialize(text)}: oracle decodes to {JsonSerializer.Serialize(oracleText)}, ours to {JsonSerializer.Serialize(tok.Decode(ids))}");
            Assert.Equal(text, tok.Decode(ids));
        }
        output.WriteLine($"{agree} texts agree exactly, {tieOnly} differ only by tie-breaking");
        // Most texts have no tie at all; the comparison must not be vacuous.
        Assert.True(agree >= 300, $"only {agree} of 400 texts agree exactly ({tieOnly} differ by tie-breaking)");
    }
}
