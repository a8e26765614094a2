// SftTrainer's resumable checkpoints: one directory, replaced as a whole (CheckpointDirectory.cs), with
//   trainable.safetensors   every trainable parameter by name, in its own dtype
//   optimizer.safetensors   AdamW's moments "m.NAME" and "v.NAME" (f32; f64 for f64 parameters)
//   trainer_state.json      step counters, compute dtype, loss scale, data position, generator words,
//                           the step and validation histories (non-finite numbers written as null)
// Loading checks everything against the run before it changes anything: each tensor's name, dtype and
// shape against the model, that the values are finite (second moments >= 0), that both moments exist for
// every parameter once the optimizer has stepped, and that the counters agree (history length = step,
// optimizer steps = steps - skipped, step within the run, loss scale and generator state possible).
// A checkpoint that is not exactly what this run saves is refused with one line naming the file, because
// a silently different state would change the trajectory that resume promises to repeat bit for bit.
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using TinyLlama.Autograd;
using TinyLlama.Formats;
using TinyLlama.Tensors;
using TinyLlama.Training.Data;

namespace TinyLlama.Training.Trainer;

public sealed partial class SftTrainer
{
    private const string ParamsFile = "trainable.safetensors";
    private const string OptimizerFile = "optimizer.safetensors";
    private const string StateFile = "trainer_state.json";

    /// <summary>The files of a checkpoint directory; a copy holding all of them is complete.</summary>
    public static IReadOnlyList<string> CheckpointFiles { get; } = [ParamsFile, OptimizerFile, StateFile];

    // trainer_state.json grows by ~150 bytes a step; a gigabyte is millions of steps, more is not ours.
    private const long MaxStateBytes = 1L << 30;

    /// <summary>
    /// Writes everything needed to resume into <paramref name="dir"/>, atomically: the files go to a
    /// temporary sibling directory that then replaces the old checkpoint (see <see cref="CheckpointDirectory"/>),
    /// so an interrupted or failed save leaves the previous checkpoint intact and loadable. With several ranks
    /// every rank calls it (ZeRO stage 1 gathers the moments) and rank 0 alone writes.
    /// </summary>
    public void SaveCheckpoint(string dir)
    {
        // With ZeRO stage 1 the moments are gathered from every rank first (every rank calls this); with
        // several ranks only rank 0 writes, as the ranks hold the same state.
        var (zeroM, zeroV) = zero?.GatherState() ?? default;
        if (collective.Rank != 0) return;
        CheckpointDirectory.Commit(dir, CheckpointFiles, tmp =>
        {
            Safetensors.Save(Path.Combine(tmp, ParamsFile), trainable.ToDictionary(p => p.Name, p => p.Param.Detach()));
            var moments = new Dictionary<string, Tensor>();
            for (int i = 0; i < trainable.Count; i++)
            {
                var (m, v) = zero is null ? optimizer.State(i) : (zeroM[i], zeroV[i]);
                if (m is not null) moments["m." + trainable[i].Name] = m;
                if (v is not null) moments["v." + trainable[i].Name] = v;
            }
            Safetensors.Save(Path.Combine(tmp, OptimizerFile), moments);
            var state = new JsonObject
            {
                ["step"] = Step,
                ["optimizer_step"] = zero?.StepCount ?? optimizer.StepCount,
                ["compute_dtype"] = options.ComputeDType.Name(),
                ["loss_scale"] = scaler?.Scale ?? 1.0,
                ["scaler_good_steps"] = scaler?.GoodSteps ?? 0,
                ["data"] = JsonNode.Parse(objective.GetState().ToJson()),
                ["rng"] = rng is null ? null : new JsonArray(rng.GetState().Select(u => (JsonNode)u.ToString(CultureInfo.InvariantCulture)).ToArray()),
                ["history"] = new JsonArray(History.Select(h => (JsonNode)HistoryEntry(h)).ToArray()),
                ["validation"] = new JsonArray(ValidationHistory.Select(v => (JsonNode)new JsonObject { ["step"] = v.Step, ["loss"] = Finite(v.Loss) }).ToArray()),
            };
            // Renamed into place whole, so a copy that holds the file holds all of it.
            string statePath = Path.Combine(tmp, StateFile), partial = statePath + ".partial";
            File.WriteAllText(partial, state.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
            FaultInjection.Reach(FaultInjection.AtomicWrite, partial);
            File.Move(partial, statePath);
        });
    }

    // One step's log; an objective's metrics (DPO, reward model) go in a "metrics" object, absent for SFT.
    private static JsonObject HistoryEntry(StepLog h)
    {
        var entry = new JsonObject
        {
            ["step"] = h.Step, ["loss"] = Finite(h.Loss), ["lr"] = Finite(h.Lr), ["tokens_per_second"] = Finite(h.TokensPerSecond),
            ["grad_norm"] = Finite(h.GradNorm), ["skipped"] = h.Skipped,
        };
        if (h.Metrics.Count > 0) entry["metrics"] = new JsonObject(h.Metrics.Select(m => KeyValuePair.Create(m.Key, Finite(m.Value))));
        return entry;
    }

    // JSON has no NaN or infinity: such a value is written as null and read back as NaN.
    private static JsonNode? Finite(double x) => double.IsFinite(x) ? JsonValue.Create(x) : null;

    /// <summary>
    /// Restores a checkpoint written by <see cref="SaveCheckpoint"/> (same model setup, options and data),
    /// first recovering an interrupted save (<see cref="CheckpointDirectory.Recover"/>). Every tensor and
    /// counter is checked before anything changes; a one-line <see cref="InvalidDataException"/> names the
    /// file and what is wrong.
    /// </summary>
    public void LoadCheckpoint(string dir)
    {
        CheckpointDirectory.Recover(dir, CheckpointFiles);
        string Need(string name)
        {
            var path = Path.Combine(dir, name);
            if (!File.Exists(path)) throw new InvalidDataException($"{dir}: not a training checkpoint ({name} is missing)");
            return path;
        }
        var paramsFile = SafetensorsFile.Open(Need(ParamsFile));
        var momentsFile = SafetensorsFile.Open(Need(OptimizerFile));
        string statePath = Need(StateFile);
        var state = ReadState(statePath);
        CheckState(state, statePath);
        CheckTensors(paramsFile, momentsFile, state.OptimizerStep);

        // The data position is the last check and the first change: SetState validates before it assigns.
        try { objective.SetState(state.Data); }
        catch (Exception e) when (e is ArgumentException or InvalidOperationException)
        {
            throw new InvalidDataException($"{statePath}: field \"data\": {e.Message}");
        }
        using (GradMode.NoGrad())
            foreach (var (name, p) in trainable) p.CopyFrom_(paramsFile.Get(name));
        var m1 = new Tensor?[trainable.Count];
        var m2 = new Tensor?[trainable.Count];
        if (state.OptimizerStep > 0)
        {
            for (int i = 0; i < trainable.Count; i++)
            {
                m1[i] = momentsFile.Get("m." + trainable[i].Name).Clone();
                m2[i] = momentsFile.Get("v." + trainable[i].Name).Clone();
            }
        }
        if (zero is null) optimizer.SetState(state.OptimizerStep, m1, m2);
        else zero.SetState(state.OptimizerStep, m1, m2);
        Step = state.Step;
        scaler?.Restore(state.LossScale, state.ScalerGoodSteps);
        if (rng is not null) rng.SetState(state.Rng!);
        History.Clear();
        History.AddRange(state.History);
        ValidationHistory.Clear();
        ValidationHistory.AddRange(state.Validation);
    }

    private sealed record SavedState(
        int Step, int OptimizerStep, string? ComputeDType, double LossScale, int ScalerGoodSteps, DataLoaderState Data,
        ulong[]? Rng, List<StepLog> History, List<(int Step, double Loss)> Validation);

    // The counters against each other and against this run.
    private void CheckState(SavedState s, string path)
    {
        void Fail(string what) => throw new InvalidDataException($"{path}: {what}");
        if (s.Step > options.Steps) Fail($"the checkpoint is from step {s.Step}, beyond this run's {options.Steps} steps");
        if (s.History.Count != s.Step) Fail($"\"history\" has {s.History.Count} entries for step {s.Step}");
        int skipped = 0;
        for (int i = 0; i < s.History.Count; i++)
        {
            if (s.History[i].Step != i + 1) Fail($"history[{i}] is step {s.History[i].Step}, expected {i + 1}");
            if (s.History[i].Skipped) skipped++;
        }
        if (skipped > 0 && scaler is null) Fail($"{skipped} steps were skipped, which only f16 loss scaling does, but this run computes in {options.ComputeDType.Name()}");
        if (s.OptimizerStep != s.Step - skipped)
            Fail($"\"optimizer_step\" is {s.OptimizerStep}, but {s.Step} steps with {skipped} skipped make {s.Step - skipped}");
        if (s.ComputeDType is not null)
        {
            DType saved = DType.F32;
            try { saved = DTypes.Parse(s.ComputeDType); }
            catch (ArgumentException) { Fail($"\"compute_dtype\" is {MessageText.Quote(s.ComputeDType)}, not a dtype"); }
            if (saved != options.ComputeDType) Fail($"the checkpoint was trained in {saved.Name()}, this run computes in {options.ComputeDType.Name()}");
        }
        if (scaler is null)
        {
            if (s.LossScale != 1 || s.ScalerGoodSteps != 0)
                Fail(string.Create(CultureInfo.InvariantCulture, $"loss scale {s.LossScale} (good steps {s.ScalerGoodSteps}) was saved by an f16 run; this run computes in {options.ComputeDType.Name()}"));
        }
        else
        {
            if (!(s.LossScale >= 1 && s.LossScale <= 18446744073709551616.0)) Fail(string.Create(CultureInfo.InvariantCulture, $"\"loss_scale\" is {s.LossScale}, expected a number in [1, 2^64]"));
            if (s.ScalerGoodSteps >= scaler.GrowthInterval) Fail($"\"scaler_good_steps\" is {s.ScalerGoodSteps}, expected fewer than {scaler.GrowthInterval}");
        }
        foreach (var (step, _) in s.Validation)
            if (step < 1 || step > s.Step) Fail($"a validation entry is for step {step}, outside 1..{s.Step}");
        if (rng is not null)
        {
            if (s.Rng is null) Fail("\"rng\" is missing, but this run draws dropout masks from a generator");
            var w = s.Rng!;
            if (w.Length != 6) Fail($"\"rng\" has {w.Length} words, expected 6");
            if ((w[0] | w[1] | w[2] | w[3]) == 0) Fail("\"rng\" is the all-zero xoshiro state, which a generator never reaches");
            if (w[5] > 1) Fail($"\"rng\" word 5 (has a spare normal) is {w[5]}, expected 0 or 1");
            if (w[5] == 1 && !double.IsFinite(BitConverter.Int64BitsToDouble((long)w[4]))) Fail("\"rng\" holds a spare normal that is not a finite number");
        }
    }

    // Every tensor's presence, dtype, shape and values against the trainable parameters.
    private void CheckTensors(SafetensorsFile paramsFile, SafetensorsFile momentsFile, int optimizerStep)
    {
        var names = new HashSet<string>(trainable.Select(p => p.Name), StringComparer.Ordinal);
        foreach (var name in paramsFile.Names)
            if (!names.Contains(name)) throw new InvalidDataException($"{paramsFile.Path}: unexpected tensor {MessageText.Quote(name)} (not a trainable parameter of this run; was the checkpoint made with other LoRA targets?)");
        var moments = new HashSet<string>(StringComparer.Ordinal);
        foreach (var (name, p) in trainable)
        {
            if (!paramsFile.Contains(name)) throw new InvalidDataException($"{paramsFile.Path}: tensor {MessageText.Quote(name)} is missing (was the checkpoint made with other LoRA targets?)");
            CheckTensor(paramsFile, name, p.DType, p.Shape, nonNegative: false);
            var stateType = p.DType == DType.F64 ? DType.F64 : DType.F32;
            foreach (var key in new[] { "m." + name, "v." + name })
            {
                moments.Add(key);
                if (optimizerStep == 0) continue; // none may exist: reported below as unexpected
                if (!momentsFile.Contains(key))
                    throw new InvalidDataException($"{momentsFile.Path}: AdamW moment {MessageText.Quote(key)} is missing, but the optimizer has taken {optimizerStep} steps");
                CheckTensor(momentsFile, key, stateType, p.Shape, nonNegative: key[0] == 'v');
            }
        }
        foreach (var key in momentsFile.Names)
            if (!moments.Contains(key) || optimizerStep == 0)
                throw new InvalidDataException($"{momentsFile.Path}: unexpected tensor {MessageText.Quote(key)} ({(optimizerStep == 0 ? "the optimizer has not stepped yet" : "not a moment of a trainable parameter")})");
    }

    private static void CheckTensor(SafetensorsFile file, string name, DType dtype, int[] shape, bool nonNegative)
    {
        var info = file.GetInfo(name);
        if (info.DType != dtype) throw new InvalidDataException($"{file.Path}: tensor {MessageText.Quote(name)} has dtype {info.DType.Name()}, expected {dtype.Name()}");
        if (!info.Shape.AsSpan().SequenceEqual(shape)) throw new InvalidDataException($"{file.Path}: tensor {MessageText.Quote(name)} has shape {Shapes.Format(info.Shape)}, expected {Shapes.Format(shape)}");
        var t = file.Get(name);
        double[] values = dtype == DType.F64 ? t.ToArray<double>() : Array.ConvertAll(t.ToArray<float>(), x => (double)x);
        for (int i = 0; i < values.Length; i++)
        {
            if (!double.IsFinite(values[i]) || (nonNegative && values[i] < 0))
                throw new InvalidDataException(string.Create(CultureInfo.InvariantCulture,
                    $"{file.Path}: tensor {MessageText.Quote(name)} holds {values[i]} in element {i}{(nonNegative ? " (a second moment must be finite and >= 0)" : " (values must be finite)")}"));
        }
    }

    // ---- trainer_state.json, each field typed and in range ----

    private static SavedState ReadState(string path)
    {
        long length = new FileInfo(path).Length;
        if (length > MaxStateBytes) throw new InvalidDataException($"{path}: {length:N0} bytes, more than a trainer state can be ({MaxStateBytes:N0})");
        JsonDocument doc;
        byte[] bytes = File.ReadAllBytes(path);
        if (!System.Text.Unicode.Utf8.IsValid(bytes)) throw new InvalidDataException($"{path}: malformed JSON (the file is not valid UTF-8)");
        try { doc = JsonDocument.Parse(bytes); }
        catch (JsonException e) { throw new InvalidDataException($"{path}: malformed JSON ({e.Message.ReplaceLineEndings(" ")})"); }
        using (doc)
        {
            try
            {
                var root = doc.RootElement;
                if (root.ValueKind != JsonValueKind.Object) throw Bad(path, "the file", "a JSON object");
                int step = Int(path, root, "step", 0, int.MaxValue);
                int optimizerStep = Int(path, root, "optimizer_step", 0, int.MaxValue);
                string? dtype = root.TryGetProperty("compute_dtype", out var d) ? (d.ValueKind == JsonValueKind.String ? d.GetString() : throw Bad(path, "compute_dtype", "a string")) : null;
                double lossScale = Number(path, root, "loss_scale", allowNull: false);
                int goodSteps = Int(path, root, "scaler_good_steps", 0, int.MaxValue);
                DataLoaderState data;
                try { data = DataLoaderState.FromJson(Field(path, root, "data", JsonValueKind.Object).GetRawText()); }
                catch (InvalidDataException e) { throw new InvalidDataException($"{path}: {e.Message}"); }
                ulong[]? words = null;
                if (root.TryGetProperty("rng", out var r) && r.ValueKind != JsonValueKind.Null)
                {
                    if (r.ValueKind != JsonValueKind.Array || r.GetArrayLength() > 64) throw Bad(path, "rng", "an array of 6 decimal strings");
                    words = r.EnumerateArray().Select(w => w.ValueKind == JsonValueKind.String && ulong.TryParse(w.GetString(), NumberStyles.None, CultureInfo.InvariantCulture, out var u)
                        ? u : throw Bad(path, "rng", "an array of 6 decimal strings")).ToArray();
                }
                var history = new List<StepLog>();
                foreach (var h in Field(path, root, "history", JsonValueKind.Array).EnumerateArray())
                {
                    if (h.ValueKind != JsonValueKind.Object) throw Bad(path, "history", "an array of objects");
                    string at = $"history[{history.Count}]";
                    double loss = Number(path, h, "loss", allowNull: false, at), lr = Number(path, h, "lr", allowNull: false, at);
                    double tps = Number(path, h, "tokens_per_second", allowNull: false, at), norm = Number(path, h, "grad_norm", allowNull: true, at);
                    if (lr < 0 || tps < 0 || norm < 0) throw Bad(path, at, "lr, tokens_per_second and grad_norm >= 0");
                    var skipped = Field(path, h, "skipped", JsonValueKind.True, at);
                    var log = new StepLog(Int(path, h, "step", 1, int.MaxValue, at), loss, lr, tps, norm, skipped.GetBoolean());
                    if (h.TryGetProperty("metrics", out var m))
                    {
                        if (m.ValueKind != JsonValueKind.Object) throw Bad(path, at + ".metrics", "an object of numbers");
                        var metrics = new Dictionary<string, double>(StringComparer.Ordinal);
                        foreach (var item in m.EnumerateObject()) metrics[item.Name] = Number(path, m, item.Name, allowNull: true, at + ".metrics");
                        log = log with { Metrics = metrics };
                    }
                    history.Add(log);
                }
                var validation = new List<(int, double)>();
                foreach (var v in Field(path, root, "validation", JsonValueKind.Array).EnumerateArray())
                {
                    if (v.ValueKind != JsonValueKind.Object) throw Bad(path, "validation", "an array of objects");
                    string at = $"validation[{validation.Count}]";
                    validation.Add((Int(path, v, "step", 1, int.MaxValue, at), Number(path, v, "loss", allowNull: true, at)));
                }
                return new SavedState(step, optimizerStep, dtype, lossScale, goodSteps, data, words, history, validation);
            }
            catch (InvalidOperationException e) // a string with a lone surrogate escape, for one
            {
                throw new InvalidDataException($"{path}: unreadable value ({e.Message})");
            }
        }
    }

    private static InvalidDataException Bad(string path, string field, string expected) =>
        new($"{path}: field \"{field}\" must be {expected}");

    private static JsonElement Field(string path, JsonElement obj, string name, JsonValueKind kind, string? at = null)
    {
        string field = at is null ? name : at + "." + name;
        if (!obj.TryGetProperty(name, out var value)) throw new InvalidDataException($"{path}: field \"{field}\" is missing");
        bool ok = value.ValueKind == kind || (kind == JsonValueKind.True && value.ValueKind == JsonValueKind.False);
        if (!ok) throw Bad(path, field, kind switch { JsonValueKind.True => "true or false", JsonValueKind.Number => "a number", _ => "an " + kind.ToString().ToLowerInvariant() });
        return value;
    }

    private static int Int(string path, JsonElement obj, string name, int min, int max, string? at = null)
    {
        var value = Field(path, obj, name, JsonValueKind.Number, at);
        if (!value.TryGetInt32(out int x) || x < min || x > max)
            throw Bad(path, at is null ? name : at + "." + name, $"an integer in [{min}, {max}], not {MessageText.Escape(value.GetRawText())}");
        return x;
    }

    // A finite number (null, read as NaN, where the writer puts non-finite values and allowNull says so).
    private static double Number(string path, JsonElement obj, string name, bool allowNull, string? at = null)
    {
        if (allowNull && obj.TryGetProperty(name, out var n) && n.ValueKind == JsonValueKind.Null) return double.NaN;
        var value = Field(path, obj, name, JsonValueKind.Number, at);
        if (!value.TryGetDouble(out double x) || !double.IsFinite(x))
            throw Bad(path, at is null ? name : at + "." + name, $"a finite number, not {MessageText.Escape(value.GetRawText())}");
        return x;
    }
}
