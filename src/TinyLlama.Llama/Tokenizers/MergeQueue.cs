// The priority queue ("agenda") of candidate BPE merges: a binary min-heap of structs.
//
// BPE repeatedly merges the best adjacent pair. Rescanning all pairs after every merge costs
// O(n^2) on long texts; instead every adjacent pair that could merge is pushed once, the best is
// popped, and only the two pairs a merge creates (with its left and right neighbours) are pushed.
// Entries made stale by earlier merges are recognised when popped and dropped (lazy deletion),
// exactly as SentencePiece's bpe_model.cc and Hugging Face's word.rs do. Total O(n log n).
//
// The order is packed into one 64-bit key, smaller = better, so a comparison is one instruction:
//   high 32 bits: the merge's priority (negated score for SentencePiece, merge rank for HF),
//   low 32 bits:  the left symbol's index, so that ties go to the leftmost pair.
namespace TinyLlama.Tokenizers;

/// <summary>One candidate merge of the symbols at Left and Right into piece Id.</summary>
internal struct MergeCandidate
{
    public long Key;   // priority then position; smaller pops first
    public int Left;   // index of the left symbol
    public int Right;  // index of the right symbol (SentencePiece) / unused (HF checks the current neighbour)
    public int Length; // combined length in chars when pushed (SentencePiece's staleness test)
    public int Id;     // the merged piece's id
}

internal sealed class MergeQueue(int capacity)
{
    private MergeCandidate[] _heap = new MergeCandidate[Math.Max(capacity, 4)];
    private int _count;

    /// <summary>Key for SentencePiece: higher score first, then smaller <paramref name="position"/> (the left index: leftmost).</summary>
    public static long ScoreKey(float score, int position)
    {
        // Map the float to an int with the same order (flip the magnitude bits of negatives), then
        // invert it (~) so that the highest score gets the smallest key. -0 counts as +0, as in
        // SentencePiece's float comparison.
        if (score == 0) score = 0;
        int bits = BitConverter.SingleToInt32Bits(score);
        int ordered = bits >= 0 ? bits : bits ^ 0x7FFFFFFF;
        return ((long)~ordered << 32) | (uint)position;
    }

    /// <summary>Key for Hugging Face merges: lowest rank first, then leftmost.</summary>
    public static long RankKey(int rank, int left) => ((long)rank << 32) | (uint)left;

    public int Count => _count;

    public void Push(in MergeCandidate item)
    {
        if (_count == _heap.Length) Array.Resize(ref _heap, _heap.Length * 2);
        int i = _count++;
        while (i > 0)
        {
            int parent = (i - 1) >> 1;
            if (_heap[parent].Key <= item.Key) break;
            _heap[i] = _heap[parent];
            i = parent;
        }
        _heap[i] = item;
    }

    public bool TryPop(out MergeCandidate top)
    {
        if (_count == 0)
        {
            top = default;
            return false;
        }
        top = _heap[0];
        var last = _heap[--_count];
        int i = 0;
        while (true)
        {
            int child = 2 * i + 1;
            if (child >= _count) break;
            if (child + 1 < _count && _heap[child + 1].Key < _heap[child].Key) child++;
            if (last.Key <= _heap[child].Key) break;
            _heap[i] = _heap[child];
            i = child;
        }
        if (_count > 0) _heap[i] = last;
        return true;
    }
}
