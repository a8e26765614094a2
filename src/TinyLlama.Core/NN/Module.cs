// The module base class, as in torch.nn.Module: explicitly registered parameters and submodules
// (no reflection), dotted names ("layers.0.self_attn.q_proj.weight"), state dicts, train/eval mode.
// A submodule can be swapped for another of the type it was registered as (torch.nn.Module.set_submodule),
// which is how a LoRA wrapper takes a projection's place without changing any parameter name.
using TinyLlama.Autograd;

using TinyLlama.Tensors;

namespace TinyLlama.NN;

/// <summary>A layer or model: named parameters, buffers and submodules.</summary>
public abstract class Module
{
    private readonly List<(string Name, Tensor Value)> parameters = [];
    // Declared: the type the child was registered as; a replacement must be one (see ReplaceModule).
    private readonly List<(string Name, Module Value, Type Declared)> children = [];

    /// <summary>True in training mode (dropout active); see <see cref="Train"/> and <see cref="Eval"/>.</summary>
    public bool Training { get; private set; } = true;

    /// <summary>Registers a parameter (it is made a leaf that requires grad) and returns it.</summary>
    protected Tensor RegisterParameter(string name, Tensor value)
    {
        if (parameters.Any(p => p.Name == name)) throw new ArgumentException($"parameter '{name}' registered twice");
        if (value.DType.IsFloat() && value.IsLeaf) value.RequiresGrad = true;
        parameters.Add((name, value));
        return value;
    }

    /// <summary>
    /// Registers a submodule and returns it. <typeparamref name="T"/> is the type it is registered as: a
    /// later <see cref="ReplaceModule"/> accepts any module of that type (a subclass included).
    /// </summary>
    protected T RegisterModule<T>(string name, T module) where T : Module
    {
        if (children.Any(c => c.Name == name)) throw new ArgumentException($"module '{name}' registered twice");
        children.Add((name, module, typeof(T)));
        return module;
    }

    /// <summary>This module's own parameters, in registration order.</summary>
    protected IReadOnlyList<(string Name, Tensor Value)> OwnParameters => parameters;

    /// <summary>Replaces one of this module's own parameters (e.g. with a tensor over a mapped checkpoint).</summary>
    protected virtual void ReplaceOwnParameter(string name, Tensor value)
    {
        int i = parameters.FindIndex(p => p.Name == name);
        if (i < 0) throw new ArgumentException($"no parameter '{name}' in {GetType().Name}");
        var old = parameters[i].Value;
        if (!old.Shape.SequenceEqual(value.Shape))
            throw new ArgumentException($"parameter '{name}': shape {Tensors.Shapes.Format(value.Shape)} does not match {Tensors.Shapes.Format(old.Shape)}");
        if (value.DType.IsFloat() && value.IsLeaf) value.RequiresGrad = old.RequiresGrad;
        parameters[i] = (name, value);
        OnParameterReplaced(name, value);
    }

    /// <summary>Lets subclasses refresh fields that cache a parameter reference.</summary>
    protected virtual void OnParameterReplaced(string name, Tensor value) { }

    /// <summary>
    /// Puts <paramref name="module"/> in place of the submodule at a dotted name ("model.layers.0.self_attn.q_proj")
    /// and returns the one it replaces. The new module must be of the type the old one was registered as;
    /// its parameters then appear under the same prefix. Parameters are not touched (no freezing, no copy).
    /// </summary>
    public Module ReplaceModule(string dottedName, Module module)
    {
        ArgumentNullException.ThrowIfNull(dottedName);
        ArgumentNullException.ThrowIfNull(module);
        int dot = dottedName.LastIndexOf('.');
        var owner = dot < 0 ? this : GetSubmodule(dottedName[..dot]);
        string name = dottedName[(dot + 1)..];
        int i = owner.children.FindIndex(c => c.Name == name);
        if (i < 0) throw new ArgumentException($"ReplaceModule: no submodule '{dottedName}' in {GetType().Name}", nameof(dottedName));
        var (_, old, declared) = owner.children[i];
        if (!declared.IsInstanceOfType(module))
            throw new ArgumentException($"ReplaceModule: '{dottedName}' is registered as a {declared.Name}; a {module.GetType().Name} cannot take its place", nameof(module));
        owner.children[i] = (name, module, declared);
        owner.OnModuleReplaced(name, module);
        return old;
    }

    /// <summary>Lets subclasses refresh fields that cache a submodule; called after the swap.</summary>
    protected virtual void OnModuleReplaced(string name, Module value) { }

    /// <summary>
    /// The registered submodule <paramref name="name"/> as a <typeparamref name="T"/>. Typed properties read
    /// their child through this, so a module put in place with <see cref="ReplaceModule"/> is seen at once.
    /// A loop over a few entries, no allocation.
    /// </summary>
    protected T Child<T>(string name) where T : Module
    {
        foreach (var (n, m, _) in children)
            if (n == name) return (T)m;
        throw new ArgumentException($"no submodule '{name}' in {GetType().Name}", nameof(name));
    }

    /// <summary>The submodule at a dotted name ("model.layers.0.mlp"); ArgumentException when there is none.</summary>
    public Module GetSubmodule(string dottedName)
    {
        ArgumentNullException.ThrowIfNull(dottedName);
        var m = this;
        foreach (var part in dottedName.Split('.'))
        {
            int i = m.children.FindIndex(c => c.Name == part);
            if (i < 0) throw new ArgumentException($"no submodule '{dottedName}' in {GetType().Name} ('{part}' not found)", nameof(dottedName));
            m = m.children[i].Value;
        }
        return m;
    }

    /// <summary>All parameters with dotted names, depth first.</summary>
    public IEnumerable<(string Name, Tensor Value)> NamedParameters(string prefix = "")
    {
        foreach (var (n, p) in parameters) yield return (prefix + n, p);
        foreach (var (n, m, _) in children)
            foreach (var item in m.NamedParameters(prefix + n + "."))
                yield return item;
    }

    /// <summary>All parameters.</summary>
    public IEnumerable<Tensor> Parameters() => NamedParameters().Select(p => p.Value);

    /// <summary>Direct submodules with their names.</summary>
    public IEnumerable<(string Name, Module Value)> NamedChildren() => children.Select(c => (c.Name, c.Value));

    /// <summary>Every submodule with its dotted name, depth first in registration order (PyTorch's named_modules, without the root).</summary>
    public IEnumerable<(string Name, Module Value)> NamedModules(string prefix = "")
    {
        foreach (var (name, child, _) in children)
        {
            string full = prefix + name;
            yield return (full, child);
            foreach (var item in child.NamedModules(full + ".")) yield return item;
        }
    }

    /// <summary>Total number of parameter elements.</summary>
    public long ParameterCount() => Parameters().Sum(p => (long)p.Numel);

    /// <summary>Clears every parameter's gradient.</summary>
    public void ZeroGrad()
    {
        foreach (var p in Parameters()) p.ZeroGrad();
    }

    /// <summary>Training mode (recursively).</summary>
    public void Train(bool on = true)
    {
        Training = on;
        foreach (var (_, m, _) in children) m.Train(on);
    }

    /// <summary>Inference mode (recursively).</summary>
    public void Eval() => Train(false);

    /// <summary>Parameters by dotted name (the tensors themselves, not copies).</summary>
    public Dictionary<string, Tensor> StateDict() => NamedParameters().ToDictionary(p => p.Name, p => p.Value);

    /// <summary>
    /// Loads tensors by dotted name. With <paramref name="copy"/> the values are copied into the existing
    /// parameters (converting dtype); otherwise the parameters are replaced by the given tensors (no copy;
    /// dtypes must match). Strict: every parameter must be given and no unknown name may appear.
    /// </summary>
    public void LoadStateDict(IReadOnlyDictionary<string, Tensor> state, bool strict = true, bool copy = true)
    {
        var own = NamedParameters().ToDictionary(p => p.Name, p => p.Value);
        if (strict)
        {
            var missing = own.Keys.Where(k => !state.ContainsKey(k)).ToList();
            if (missing.Count > 0) throw new InvalidDataException($"missing tensor '{missing[0]}'" + (missing.Count > 1 ? $" (and {missing.Count - 1} more)" : ""));
            var unexpected = state.Keys.Where(k => !own.ContainsKey(k)).ToList();
            if (unexpected.Count > 0) throw new InvalidDataException($"unexpected tensor '{unexpected[0]}'" + (unexpected.Count > 1 ? $" (and {unexpected.Count - 1} more)" : ""));
        }
        foreach (var (name, src) in state)
        {
            if (!own.TryGetValue(name, out var dst)) continue;
            if (!dst.Shape.SequenceEqual(src.Shape))
                throw new InvalidDataException($"tensor '{name}' has shape {Tensors.Shapes.Format(src.Shape)}, expected {Tensors.Shapes.Format(dst.Shape)}");
            if (copy)
            {
                using var _ = GradMode.NoGrad();
                dst.CopyFrom_(src);
            }
            else
            {
                SetParameter(name, src);
            }
        }
    }

    /// <summary>Replaces the parameter at a dotted name.</summary>
    public void SetParameter(string dottedName, Tensor value)
    {
        int dot = dottedName.IndexOf('.');
        if (dot >= 0)
        {
            string head = dottedName[..dot];
            foreach (var (n, m, _) in children)
                if (n == head) { m.SetParameter(dottedName[(dot + 1)..], value); return; }
            // A parameter name may itself contain no dots; fall through to the own-parameter lookup.
        }
        ReplaceOwnParameter(dottedName, value);
    }
}

/// <summary>An indexed list of submodules (named "0", "1", ...).</summary>
public sealed class ModuleList<T> : Module where T : Module
{
    private readonly List<T> items = [];

    public ModuleList(IEnumerable<T> modules)
    {
        foreach (var m in modules) Add(m);
    }

    /// <summary>Appends a module.</summary>
    public void Add(T module) => items.Add(RegisterModule(items.Count.ToString(System.Globalization.CultureInfo.InvariantCulture), module));

    public int Count => items.Count;

    public T this[int index] => items[index];

    protected override void OnModuleReplaced(string name, Module value) =>
        items[int.Parse(name, System.Globalization.CultureInfo.InvariantCulture)] = (T)value;

    public IEnumerator<T> GetEnumerator() => items.GetEnumerator();
}
