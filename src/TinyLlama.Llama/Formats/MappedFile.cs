// A private (copy-on-write) memory mapping of a whole file, used as the owner object of the CpuStorages that
// checkpoint tensors view in place (System.IO.MemoryMappedFiles; mmap(2) on Linux, MapViewOfFile on Windows).
//
// Why an owner object: a tensor handed out by a checkpoint reader points straight into the mapping,
// so the mapping must outlive every such tensor, however long the caller keeps them and whether or
// not the reader itself is still around. Each CpuStorage holds a reference to this object; when the
// reader and all its tensors are unreachable, the finalizer releases the pointer and the view and
// file handles (SafeHandles, whose critical finalizers run after this one) unmap and close.
// There is deliberately no public Dispose: unmapping while a tensor still points into the view
// would turn a later read into an access violation instead of an exception.
using System.IO.MemoryMappedFiles;

namespace TinyLlama.Formats;

internal sealed unsafe class MappedFile
{
    private readonly MemoryMappedFile map;
    private readonly MemoryMappedViewAccessor view;
    private int released;

    private MappedFile(string path, MemoryMappedFile map, MemoryMappedViewAccessor view, byte* pointer, long length)
    {
        Path = path;
        this.map = map;
        this.view = view;
        Pointer = pointer;
        Length = length;
    }

    /// <summary>The mapped file's path (for error messages).</summary>
    public string Path { get; }

    /// <summary>Address of the file's first byte.</summary>
    public byte* Pointer { get; }

    /// <summary>File size in bytes.</summary>
    public long Length { get; }

    /// <summary>Maps an existing non-empty file copy-on-write (an empty file cannot be mapped; callers check the length first).</summary>
    public static MappedFile Open(string path, long length)
    {
        // Copy-on-write (MAP_PRIVATE): the file is opened read-only and never modified, but a tensor over
        // the mapping may still be updated in place (fine-tuning a loaded model): the touched pages become
        // private copies instead of faulting.
        var map = MemoryMappedFile.CreateFromFile(path, FileMode.Open, mapName: null, capacity: 0, MemoryMappedFileAccess.CopyOnWrite);
        MemoryMappedViewAccessor? view = null;
        try
        {
            view = map.CreateViewAccessor(0, 0, MemoryMappedFileAccess.CopyOnWrite);
            byte* p = null;
            view.SafeMemoryMappedViewHandle.AcquirePointer(ref p);
            // The view starts at a page boundary at or below offset 0, i.e. at offset 0 itself, but add
            // PointerOffset anyway so the arithmetic stays right if the view ever starts elsewhere.
            return new MappedFile(path, map, view, p + view.PointerOffset, length);
        }
        catch
        {
            view?.Dispose();
            map.Dispose();
            throw;
        }
    }

    /// <summary>The bytes [offset, offset + count) as a span; callers have checked the range.</summary>
    public ReadOnlySpan<byte> Span(long offset, int count) => new(Pointer + offset, count);

    /// <summary>
    /// Unmaps now instead of at finalization. Only for a mapping that no tensor views yet: a reader calls
    /// it when the file fails validation, so a rejected file does not stay mapped until the next GC.
    /// </summary>
    public void ReleaseUnused()
    {
        if (Interlocked.Exchange(ref released, 1) != 0) return;
        view.SafeMemoryMappedViewHandle.ReleasePointer();
        view.Dispose();
        map.Dispose();
        GC.SuppressFinalize(this);
    }

    ~MappedFile()
    {
        if (Interlocked.Exchange(ref released, 1) == 0)
            view.SafeMemoryMappedViewHandle.ReleasePointer();
    }
}
