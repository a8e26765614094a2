// The few-shot prompt of Self-Instruct's instruction generation (Wang et al. 2022, section 2.2; Stanford
// Alpaca's prompt.txt asks for a numbered list of tasks in the same spirit) and the parse of a model's
// continuation back into a record. The wording is ours:
//
//   Here are some tasks. Each has an instruction, an input (or <noinput>) and the correct output.
//   Write one more task, different from these.
//
//   Task 1
//   Instruction: Reverse the letters.
//   Input: c a t
//   Output: t a c
//
//   Task 2
//   ...
//   Task K+1
//   Instruction:
//
// The model continues after "Instruction:". Its continuation is a record when it holds "\nInput:" and then
// "\nOutput:", with a non-empty instruction and output; the output ends where the model starts another
// task ("\n\nTask ") or at end of text. A continuation that was cut off by the token budget before either
// is malformed (its output may be incomplete), as Alpaca drops a task cut by the length limit.
namespace TinyLlama.Training.SelfInstruct;

/// <summary>Builds Self-Instruct's few-shot prompt and parses continuations.</summary>
public static class SelfInstructPrompt
{
    /// <summary>The first lines of every prompt.</summary>
    public const string Preamble =
        "Here are some tasks. Each has an instruction, an input (or <noinput>) and the correct output.\n" +
        "Write one more task, different from these.\n\n";

    /// <summary>What stands for an empty input, as in Alpaca's prompt.</summary>
    public const string NoInput = "<noinput>";

    /// <summary>What the model's next task would start with; the output ends there.</summary>
    public const string NextTask = "\n\nTask ";

    /// <summary>The prompt: <see cref="Preamble"/>, the <paramref name="examples"/> numbered from 1, and the next number's "Instruction:".</summary>
    public static string Build(IReadOnlyList<InstructionRecord> examples)
    {
        ArgumentNullException.ThrowIfNull(examples);
        var sb = new System.Text.StringBuilder(Preamble);
        for (int i = 0; i < examples.Count; i++)
        {
            var e = examples[i];
            string input = e.Input.Trim().Length == 0 ? NoInput : e.Input.Trim();
            sb.Append("Task ").Append(i + 1).Append("\nInstruction: ").Append(e.Instruction.Trim())
              .Append("\nInput: ").Append(input)
              .Append("\nOutput: ").Append(e.Output.Trim()).Append("\n\n");
        }
        return sb.Append("Task ").Append(examples.Count + 1).Append("\nInstruction:").ToString();
    }

    /// <summary>
    /// The record in a continuation of <see cref="Build"/>'s prompt, or null with the reason in
    /// <paramref name="problem"/>. <paramref name="ended"/>: the model stopped by itself (end of sequence),
    /// rather than at the token budget.
    /// </summary>
    public static InstructionRecord? Parse(string continuation, bool ended, out string? problem)
    {
        ArgumentNullException.ThrowIfNull(continuation);
        int inputAt = continuation.IndexOf("\nInput:", StringComparison.Ordinal);
        if (inputAt < 0) return Fail("no \"Input:\" line", out problem);
        int outputAt = continuation.IndexOf("\nOutput:", inputAt, StringComparison.Ordinal);
        if (outputAt < 0) return Fail("no \"Output:\" line after the input", out problem);
        int end = continuation.IndexOf(NextTask, outputAt, StringComparison.Ordinal);
        if (end < 0)
        {
            if (!ended) return Fail("cut off by the token budget", out problem);
            end = continuation.Length;
        }
        string instruction = continuation[..inputAt].Trim();
        string input = continuation[(inputAt + "\nInput:".Length)..outputAt].Trim();
        string output = continuation[(outputAt + "\nOutput:".Length)..end].Trim();
        if (instruction.Length == 0) return Fail("empty instruction", out problem);
        if (output.Length == 0) return Fail("empty output", out problem);
        if (input == NoInput) input = "";
        problem = null;
        return new InstructionRecord(instruction, input, output);
    }

    /// <summary>True once <paramref name="text"/> holds a whole task and the start of the next, so generation can stop.</summary>
    public static bool IsComplete(string text)
    {
        int outputAt = text.IndexOf("\nOutput:", StringComparison.Ordinal);
        return outputAt >= 0 && text.IndexOf(NextTask, outputAt, StringComparison.Ordinal) >= 0;
    }

    private static InstructionRecord? Fail(string reason, out string? problem)
    {
        problem = reason;
        return null;
    }
}
