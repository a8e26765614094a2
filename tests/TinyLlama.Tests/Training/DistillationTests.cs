// Knowledge distillation: weight 0 is plain cross-entropy; a student equal to its teacher has zero KL
// (and zero gradient from it); the KL term equals a direct f64 computation of
// T^2 * sum_t KL(softmax(teacher_t / T) || softmax(student_t / T)) over target positions.
using TinyLlama.Autograd;
using TinyLlama.Model;
using TinyLlama.Tensors;
using TinyLlama.Training.Data;
using TinyLlama.Training.Trainer;

namespace TinyLlama.Tests.Training;

public class DistillationTests
{
    private static SftBatch Batch() => SftDataLoader.Collate(SftTrainerTests.SyntheticExamples(3, 37, 8), 0, 32);

    [Fact]
    public void WeightZeroIsCrossEntropy()
    {
        var student = new LlamaForCausalLM(Tests.Model.LlamaTests.Tiny(), new Generator(1));
        var teacher = new LlamaForCausalLM(Tests.Model.LlamaTests.Tiny(), new Generator(2));
        var batch = Batch();
        using var _ = GradMode.NoGrad();
        double ce = new CrossEntropyLoss().SumLoss(student, batch).Item();
        double kd = new DistillationLoss(teacher, 2.0, 0.0).SumLoss(student, batch).Item();
        Assert.Equal(ce, kd, 4);
    }

    [Fact]
    public void KlTermMatchesADirectComputationAndVanishesForAnIdenticalTeacher()
    {
        var student = new LlamaForCausalLM(Tests.Model.LlamaTests.Tiny(), new Generator(1));
        var teacher = new LlamaForCausalLM(Tests.Model.LlamaTests.Tiny(), new Generator(2));
        var batch = Batch();
        double temperature = 2.5;
        double kd;
        float[] s, t;
        using (GradMode.NoGrad())
        {
            kd = new DistillationLoss(teacher, temperature, 1.0).SumLoss(student, batch).Item();
            s = student.Forward(batch.InputIds).ToArray<float>();
            t = teacher.Forward(batch.InputIds).ToArray<float>();
        }
        var targets = batch.Targets.ToArray<int>();
        int v = student.Config.VocabSize;
        double expected = 0;
        for (int p = 0; p < targets.Length; p++)
        {
            if (targets[p] == -100) continue;
            double[] ls = LogSoftmax(s.AsSpan(p * v, v), temperature), lt = LogSoftmax(t.AsSpan(p * v, v), temperature);
            for (int j = 0; j < v; j++) expected += Math.Exp(lt[j]) * (lt[j] - ls[j]);
        }
        expected *= temperature * temperature;
        Assert.True(expected > 0);
        Assert.True(Math.Abs(kd - expected) <= 1e-4 * expected, $"{kd} vs {expected}");

        // Identical teacher: KL 0 and no gradient from the distillation term.
        var twin = new LlamaForCausalLM(Tests.Model.LlamaTests.Tiny(), new Generator(1));
        var loss = new DistillationLoss(twin, temperature, 1.0).SumLoss(student, batch);
        Assert.True(Math.Abs(loss.Item()) < 1e-5, $"KL to itself is {loss.Item()}");
        loss.Backward();
        var g = student.Model.Layers[0].Mlp.UpProj.Weight.Grad!.ToArray<float>();
        Assert.All(g, x => Assert.True(Math.Abs(x) < 1e-5));
    }

    private static double[] LogSoftmax(ReadOnlySpan<float> row, double temperature)
    {
        var x = new double[row.Length];
        double max = double.NegativeInfinity;
        for (int i = 0; i < x.Length; i++) { x[i] = row[i] / temperature; max = Math.Max(max, x[i]); }
        double z = 0;
        foreach (var e in x) z += Math.Exp(e - max);
        double lz = max + Math.Log(z);
        for (int i = 0; i < x.Length; i++) x[i] -= lz;
        return x;
    }
}
