// GEMM version 3 (see GemmKernels.cs): f16/bf16 tensor cores through inline PTX mma.sync m16n8k16.
// PTX ISA, "Warp-level matrix multiply-accumulate instructions", mma.m16n8k16 with .f16/.bf16 inputs and
// .f32 accumulators (sm_80+). With groupID g = lane / 4 and t = lane % 4, a lane holds:
//   A (16 x 16, row-major) in 4 words: (row g, k 2t..2t+1), (g + 8, 2t..), (g, 2t + 8..), (g + 8, 2t + 8..)
//   B (16 x 8, "col": k pairs per column) in 2 words: (k 2t..2t+1, col g), (k 2t + 8.., col g)
//   C/D (16 x 8, f32) in 4 floats: (row g, col 2t), (g, 2t + 1), (g + 8, 2t), (g + 8, 2t + 1)
// where each word packs two 16-bit values, the lower k in the low half.
//
// Tiling: a group of 4 warps (128 threads) owns a 64 x 64 tile of c; warp w owns the 32 x 32 sub-tile at
// rows 32 (w / 2), columns 32 (w % 2): 2 x 4 mma tiles, 8 fragments = 32 f32 accumulators per lane.
// K advances BK = 32 at a time. Shared memory holds the a tile as sA[m][k pair] and the b tile as
// sB[n][k pair], 32-bit words, rows padded from 16 to 20 words: a fragment is then one 32-bit load per
// word, and the 8 rows x 4 words a warp reads for one fragment fall in 32 different banks. Per 16-wide
// K step a warp does 8 + 8 shared loads and 8 mma (each 16 x 8 x 16). Each thread copies 8 words of each
// operand per K tile (two 16-bit global loads per word, along whichever of the operand's strides is 1);
// the next tile is fetched into registers while the current one is multiplied.
// Shared memory: 2 x 64 x 20 x 4 B = 10 KiB per group, plus 8 KiB of scratch that only the emulation
// below touches.
//
// Off CUDA (CudaAsm.IsSupported is false, e.g. ILGPU's CPU accelerator) each 16-wide K step's 8 mma are
// emulated: lanes park their fragment words in shared memory and each lane gathers exactly the fragment
// elements the instruction would combine for its accumulators. So the tiling, the fragment loads and
// the epilogue are all exercised by the CPU tests; only the PTX instruction string itself is not.
// (Emulating with warp shuffles instead was 30x slower on the CPU accelerator.) On CUDA the emulation is
// dead code behind a constant branch, which ILGPU leaves for ptxas to drop.
//
// ILGPU passes CudaAsm.EmitRef operands by address, so each mma's 10 operands go through 4-byte .local
// slots at fixed addresses (a store then a load); ptxas is expected to keep them in registers, which is
// worth confirming in the SASS (cuobjdump -sass) on a GPU machine. Not done yet (next steps): ldmatrix for
// fragment loads, cp.async multi-stage pipelining, larger warp tiles; wgmma/TMA (sm_90) are out of ILGPU
// 1.5's reach.
using System.Runtime.CompilerServices;
using ILGPU;
using ILGPU.Runtime.Cuda;

namespace TinyLlama.Kernels;

/// <summary>One m16n8 f32 accumulator fragment of mma.m16n8k16 (see GemmTensorCore.cs for the lane layout).</summary>
internal struct MmaAcc
{
    public float C0, C1, C2, C3;
}

public static partial class GemmKernels
{
    internal const int TcBM = 64;
    internal const int TcBN = 64;
    internal const int TcBK = 32;
    internal const int TcThreads = 128;
    /// <summary>Words per row of sA and sB: BK / 2 pairs plus 4 words of padding.</summary>
    private const int TcLd = TcBK / 2 + 4;
    internal const int TcSharedBytes = ((TcBM + TcBN) * TcLd + TcThreads * 16) * sizeof(uint);

    private const string MmaF16 =
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};";
    private const string MmaBF16 =
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};";

    /// <summary>Version 3: c[z] = a[z] @ b[z] (+ c[z]) for 16-bit a and b of type E, 64 x 64 tiles on 4 warps.</summary>
    internal static void MatMulForwardKernel3<E, TC, EC>(ArrayView<ushort> a, ArrayView<ushort> b, ArrayView<TC> c, GemmParams p)
        where E : struct, IGemmElement<ushort>
        where TC : unmanaged where EC : struct, IGemmElement<TC>
    {
        var sA = SharedMemory.Allocate<uint>(TcBM * TcLd);   // sA is (BM, BK / 2) k pairs, row length TcLd
        var sB = SharedMemory.Allocate<uint>(TcBN * TcLd);   // sB is (BN, BK / 2) k pairs, row length TcLd
        var scratch = SharedMemory.Allocate<uint>(TcThreads * 16);   // fragment exchange of the emulation (off CUDA)
        int tid = Group.IdxX;
        int lane = tid & 31, warp = tid >> 5;
        int g = lane >> 2, t4 = lane & 3;
        int wm = (warp >> 1) * 32, wn = (warp & 1) * 32;
        int m0 = Grid.IdxY * TcBM, n0 = Grid.IdxX * TcBN;
        bool aAlongK = p.AColStride == 1;
        bool bAlongK = p.BRowStride == 1;
        int kTiles = (p.K + TcBK - 1) / TcBK;

        for (int z = Grid.IdxZ; z < p.BatchCount; z += Grid.DimZ)
        {
            int aBase = p.ABase(z), bBase = p.BBase(z);
            // Fragment (mt, nt) covers rows wm + 16 mt .. +16 and columns wn + 8 nt .. +8 of the tile.
            MmaAcc f00 = default, f01 = default, f02 = default, f03 = default;
            MmaAcc f10 = default, f11 = default, f12 = default, f13 = default;
            uint ra0 = 0, ra1 = 0, ra2 = 0, ra3 = 0, ra4 = 0, ra5 = 0, ra6 = 0, ra7 = 0;
            uint rb0 = 0, rb1 = 0, rb2 = 0, rb3 = 0, rb4 = 0, rb5 = 0, rb6 = 0, rb7 = 0;
            if (kTiles > 0)
            {
                ra0 = LoadPair(a, aBase, p.M, p.ARowStride, p.AColStride, p.K, m0, 0, tid, aAlongK);
                ra1 = LoadPair(a, aBase, p.M, p.ARowStride, p.AColStride, p.K, m0, 0, tid + 128, aAlongK);
                ra2 = LoadPair(a, aBase, p.M, p.ARowStride, p.AColStride, p.K, m0, 0, tid + 256, aAlongK);
                ra3 = LoadPair(a, aBase, p.M, p.ARowStride, p.AColStride, p.K, m0, 0, tid + 384, aAlongK);
                ra4 = LoadPair(a, aBase, p.M, p.ARowStride, p.AColStride, p.K, m0, 0, tid + 512, aAlongK);
                ra5 = LoadPair(a, aBase, p.M, p.ARowStride, p.AColStride, p.K, m0, 0, tid + 640, aAlongK);
                ra6 = LoadPair(a, aBase, p.M, p.ARowStride, p.AColStride, p.K, m0, 0, tid + 768, aAlongK);
                ra7 = LoadPair(a, aBase, p.M, p.ARowStride, p.AColStride, p.K, m0, 0, tid + 896, aAlongK);
                rb0 = LoadPair(b, bBase, p.N, p.BColStride, p.BRowStride, p.K, n0, 0, tid, bAlongK);
                rb1 = LoadPair(b, bBase, p.N, p.BColStride, p.BRowStride, p.K, n0, 0, tid + 128, bAlongK);
                rb2 = LoadPair(b, bBase, p.N, p.BColStride, p.BRowStride, p.K, n0, 0, tid + 256, bAlongK);
                rb3 = LoadPair(b, bBase, p.N, p.BColStride, p.BRowStride, p.K, n0, 0, tid + 384, bAlongK);
                rb4 = LoadPair(b, bBase, p.N, p.BColStride, p.BRowStride, p.K, n0, 0, tid + 512, bAlongK);
                rb5 = LoadPair(b, bBase, p.N, p.BColStride, p.BRowStride, p.K, n0, 0, tid + 640, bAlongK);
                rb6 = LoadPair(b, bBase, p.N, p.BColStride, p.BRowStride, p.K, n0, 0, tid + 768, bAlongK);
                rb7 = LoadPair(b, bBase, p.N, p.BColStride, p.BRowStride, p.K, n0, 0, tid + 896, bAlongK);
            }
            for (int t = 0; t < kTiles; t++)
            {
                StorePair(sA, tid, aAlongK, ra0);
                StorePair(sA, tid + 128, aAlongK, ra1);
                StorePair(sA, tid + 256, aAlongK, ra2);
                StorePair(sA, tid + 384, aAlongK, ra3);
                StorePair(sA, tid + 512, aAlongK, ra4);
                StorePair(sA, tid + 640, aAlongK, ra5);
                StorePair(sA, tid + 768, aAlongK, ra6);
                StorePair(sA, tid + 896, aAlongK, ra7);
                StorePair(sB, tid, bAlongK, rb0);
                StorePair(sB, tid + 128, bAlongK, rb1);
                StorePair(sB, tid + 256, bAlongK, rb2);
                StorePair(sB, tid + 384, bAlongK, rb3);
                StorePair(sB, tid + 512, bAlongK, rb4);
                StorePair(sB, tid + 640, bAlongK, rb5);
                StorePair(sB, tid + 768, bAlongK, rb6);
                StorePair(sB, tid + 896, bAlongK, rb7);
                Group.Barrier();

                if (t + 1 < kTiles)
                {
                    int k0 = (t + 1) * TcBK;
                    ra0 = LoadPair(a, aBase, p.M, p.ARowStride, p.AColStride, p.K, m0, k0, tid, aAlongK);
                    ra1 = LoadPair(a, aBase, p.M, p.ARowStride, p.AColStride, p.K, m0, k0, tid + 128, aAlongK);
                    ra2 = LoadPair(a, aBase, p.M, p.ARowStride, p.AColStride, p.K, m0, k0, tid + 256, aAlongK);
                    ra3 = LoadPair(a, aBase, p.M, p.ARowStride, p.AColStride, p.K, m0, k0, tid + 384, aAlongK);
                    ra4 = LoadPair(a, aBase, p.M, p.ARowStride, p.AColStride, p.K, m0, k0, tid + 512, aAlongK);
                    ra5 = LoadPair(a, aBase, p.M, p.ARowStride, p.AColStride, p.K, m0, k0, tid + 640, aAlongK);
                    ra6 = LoadPair(a, aBase, p.M, p.ARowStride, p.AColStride, p.K, m0, k0, tid + 768, aAlongK);
                    ra7 = LoadPair(a, aBase, p.M, p.ARowStride, p.AColStride, p.K, m0, k0, tid + 896, aAlongK);
                    rb0 = LoadPair(b, bBase, p.N, p.BColStride, p.BRowStride, p.K, n0, k0, tid, bAlongK);
                    rb1 = LoadPair(b, bBase, p.N, p.BColStride, p.BRowStride, p.K, n0, k0, tid + 128, bAlongK);
                    rb2 = LoadPair(b, bBase, p.N, p.BColStride, p.BRowStride, p.K, n0, k0, tid + 256, bAlongK);
                    rb3 = LoadPair(b, bBase, p.N, p.BColStride, p.BRowStride, p.K, n0, k0, tid + 384, bAlongK);
                    rb4 = LoadPair(b, bBase, p.N, p.BColStride, p.BRowStride, p.K, n0, k0, tid + 512, bAlongK);
                    rb5 = LoadPair(b, bBase, p.N, p.BColStride, p.BRowStride, p.K, n0, k0, tid + 640, bAlongK);
                    rb6 = LoadPair(b, bBase, p.N, p.BColStride, p.BRowStride, p.K, n0, k0, tid + 768, bAlongK);
                    rb7 = LoadPair(b, bBase, p.N, p.BColStride, p.BRowStride, p.K, n0, k0, tid + 896, bAlongK);
                }

                for (int ks = 0; ks < TcBK / 16; ks++)
                {
                    // Word (row, ks * 8 + t4) holds k = 16 ks + 2 t4 and +1; +4 words is k + 8.
                    int ia = (wm + g) * TcLd + ks * 8 + t4;
                    uint a00 = sA[ia], a01 = sA[ia + 8 * TcLd], a02 = sA[ia + 4], a03 = sA[ia + 8 * TcLd + 4];
                    ia += 16 * TcLd;
                    uint a10 = sA[ia], a11 = sA[ia + 8 * TcLd], a12 = sA[ia + 4], a13 = sA[ia + 8 * TcLd + 4];
                    int ib = (wn + g) * TcLd + ks * 8 + t4;
                    uint b00 = sB[ib], b01 = sB[ib + 4];
                    uint b10 = sB[ib + 8 * TcLd], b11 = sB[ib + 8 * TcLd + 4];
                    uint b20 = sB[ib + 16 * TcLd], b21 = sB[ib + 16 * TcLd + 4];
                    uint b30 = sB[ib + 24 * TcLd], b31 = sB[ib + 24 * TcLd + 4];
                    if (CudaAsm.IsSupported)
                    {
                        Mma<E>(ref f00, a00, a01, a02, a03, b00, b01);
                        Mma<E>(ref f01, a00, a01, a02, a03, b10, b11);
                        Mma<E>(ref f02, a00, a01, a02, a03, b20, b21);
                        Mma<E>(ref f03, a00, a01, a02, a03, b30, b31);
                        Mma<E>(ref f10, a10, a11, a12, a13, b00, b01);
                        Mma<E>(ref f11, a10, a11, a12, a13, b10, b11);
                        Mma<E>(ref f12, a10, a11, a12, a13, b20, b21);
                        Mma<E>(ref f13, a10, a11, a12, a13, b30, b31);
                    }
                    else
                    {
                        MmaStepEmulated<E>(scratch, ref f00, ref f01, ref f02, ref f03, ref f10, ref f11, ref f12, ref f13,
                                           a00, a01, a02, a03, a10, a11, a12, a13, b00, b01, b10, b11, b20, b21, b30, b31);
                    }
                }
                Group.Barrier();
            }

            int cBase = p.CBase(z);
            int r0 = m0 + wm + g, c0 = n0 + wn + 2 * t4;
            StoreFragment<TC, EC>(c, p, cBase, r0, c0, f00);
            StoreFragment<TC, EC>(c, p, cBase, r0, c0 + 8, f01);
            StoreFragment<TC, EC>(c, p, cBase, r0, c0 + 16, f02);
            StoreFragment<TC, EC>(c, p, cBase, r0, c0 + 24, f03);
            StoreFragment<TC, EC>(c, p, cBase, r0 + 16, c0, f10);
            StoreFragment<TC, EC>(c, p, cBase, r0 + 16, c0 + 8, f11);
            StoreFragment<TC, EC>(c, p, cBase, r0 + 16, c0 + 16, f12);
            StoreFragment<TC, EC>(c, p, cBase, r0 + 16, c0 + 24, f13);
        }
    }

    /// <summary>
    /// Word w (0..1023) of a 64-row x 16-pair tile at (row0, k0) of a 16-bit operand whose element
    /// (row, k) is at bits[baseIndex + row * rowStride + k * kStride]: the pair (k, k + 1) with k even, k in
    /// the low half; zeros outside rows x kLimit. Words go along k when alongK, else along rows.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static uint LoadPair(ArrayView<ushort> bits, int baseIndex, int rows, int rowStride, int kStride, int kLimit,
                                 int row0, int k0, int w, bool alongK)
    {
        int row = row0 + (alongK ? w >> 4 : w & 63);
        int k = k0 + 2 * (alongK ? w & 15 : w >> 6);
        int at = baseIndex + row * rowStride + k * kStride;
        bool in0 = row < rows && k < kLimit;
        bool in1 = row < rows && k + 1 < kLimit;
        uint lo = bits[in0 ? at : 0];
        uint hi = bits[in1 ? at + kStride : 0];
        return (in0 ? lo : 0u) | ((in1 ? hi : 0u) << 16);
    }

    /// <summary>Stores word w of a tile (see <see cref="LoadPair"/>) at s[row][k pair].</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void StorePair(ArrayView<uint> s, int w, bool alongK, uint word)
    {
        int row = alongK ? w >> 4 : w & 63;
        int kw = alongK ? w & 15 : w >> 6;
        s[row * TcLd + kw] = word;
    }

    /// <summary>Writes the lane's four elements of a 16 x 8 fragment whose (g, 2t) element is (row, col).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void StoreFragment<TC, EC>(ArrayView<TC> c, GemmParams p, int cBase, int row, int col, MmaAcc f)
        where TC : unmanaged where EC : struct, IGemmElement<TC>
    {
        StoreC<TC, EC>(c, p, cBase, row, col, f.C0);
        StoreC<TC, EC>(c, p, cBase, row, col + 1, f.C1);
        StoreC<TC, EC>(c, p, cBase, row + 8, col, f.C2);
        StoreC<TC, EC>(c, p, cBase, row + 8, col + 1, f.C3);
    }

    /// <summary>d += A B for one m16n8k16 tile with the mma instruction (CUDA only; warp-collective).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Mma<E>(ref MmaAcc d, uint a0, uint a1, uint a2, uint a3, uint b0, uint b1)
        where E : struct, IGemmElement<ushort>
    {
        Ref<float> d0 = d.C0, d1 = d.C1, d2 = d.C2, d3 = d.C3;
        Input<uint> x0 = a0, x1 = a1, x2 = a2, x3 = a3, y0 = b0, y1 = b1;
        if (default(E).IsBFloat16)
            CudaAsm.EmitRef(MmaBF16, ref d0, ref d1, ref d2, ref d3, ref x0, ref x1, ref x2, ref x3, ref y0, ref y1);
        else
            CudaAsm.EmitRef(MmaF16, ref d0, ref d1, ref d2, ref d3, ref x0, ref x1, ref x2, ref x3, ref y0, ref y1);
        d.C0 = d0.Value;
        d.C1 = d1.Value;
        d.C2 = d2.Value;
        d.C3 = d3.Value;
    }

    /// <summary>
    /// The 8 mma of one 16-wide K step without tensor cores: every lane parks its fragment words in
    /// <paramref name="scratch"/> (16 words per lane), and then computes its own accumulator elements
    /// from the words of the lanes that hold the rows of A and columns of B it needs, exactly the
    /// elements the instruction would combine. Two group barriers per step (all threads call it).
    /// </summary>
    private static void MmaStepEmulated<E>(ArrayView<uint> scratch,
                                           ref MmaAcc f00, ref MmaAcc f01, ref MmaAcc f02, ref MmaAcc f03,
                                           ref MmaAcc f10, ref MmaAcc f11, ref MmaAcc f12, ref MmaAcc f13,
                                           uint a00, uint a01, uint a02, uint a03, uint a10, uint a11, uint a12, uint a13,
                                           uint b00, uint b01, uint b10, uint b11, uint b20, uint b21, uint b30, uint b31)
        where E : struct, IGemmElement<ushort>
    {
        int tid = Group.IdxX;
        int lane = tid & 31, warpBase = (tid - lane) * 16;
        int mine = warpBase + lane * 16;
        scratch[mine] = a00; scratch[mine + 1] = a01; scratch[mine + 2] = a02; scratch[mine + 3] = a03;
        scratch[mine + 4] = a10; scratch[mine + 5] = a11; scratch[mine + 6] = a12; scratch[mine + 7] = a13;
        scratch[mine + 8] = b00; scratch[mine + 9] = b01; scratch[mine + 10] = b10; scratch[mine + 11] = b11;
        scratch[mine + 12] = b20; scratch[mine + 13] = b21; scratch[mine + 14] = b30; scratch[mine + 15] = b31;
        Group.Barrier();
        EmulateFragment<E>(scratch, warpBase, lane, 0, 8, ref f00);
        EmulateFragment<E>(scratch, warpBase, lane, 0, 10, ref f01);
        EmulateFragment<E>(scratch, warpBase, lane, 0, 12, ref f02);
        EmulateFragment<E>(scratch, warpBase, lane, 0, 14, ref f03);
        EmulateFragment<E>(scratch, warpBase, lane, 4, 8, ref f10);
        EmulateFragment<E>(scratch, warpBase, lane, 4, 10, ref f11);
        EmulateFragment<E>(scratch, warpBase, lane, 4, 12, ref f12);
        EmulateFragment<E>(scratch, warpBase, lane, 4, 14, ref f13);
        Group.Barrier();
    }

    /// <summary>
    /// d += A B for the fragment whose A words sit at slot aSlot..aSlot+3 and B words at bSlot, bSlot+1 of
    /// each lane's scratch: lane (g, t) needs rows g and g + 8 of A, held by lanes 4 g + q, and columns
    /// 2 t and 2 t + 1 of B, held by lanes 4 (2 t) + q and 4 (2 t + 1) + q, for q = 0..3.
    /// </summary>
    private static void EmulateFragment<E>(ArrayView<uint> scratch, int warpBase, int lane, int aSlot, int bSlot, ref MmaAcc d)
        where E : struct, IGemmElement<ushort>
    {
        int g = lane >> 2, t = lane & 3;
        float d0 = d.C0, d1 = d.C1, d2 = d.C2, d3 = d.C3;
        for (int q = 0; q < 4; q++)
        {
            int srcA = warpBase + (4 * g + q) * 16 + aSlot;
            int srcB0 = warpBase + (4 * (2 * t) + q) * 16 + bSlot;
            int srcB1 = srcB0 + 4 * 16;
            uint x0 = scratch[srcA];         // A[g][2q..2q+1]
            uint x1 = scratch[srcA + 1];     // A[g+8][2q..2q+1]
            uint x2 = scratch[srcA + 2];     // A[g][2q+8..2q+9]
            uint x3 = scratch[srcA + 3];     // A[g+8][2q+8..2q+9]
            uint y0 = scratch[srcB0];        // B[2q..2q+1][2t]
            uint y1 = scratch[srcB0 + 1];    // B[2q+8..2q+9][2t]
            uint w0 = scratch[srcB1];        // B[2q..2q+1][2t+1]
            uint w1 = scratch[srcB1 + 1];    // B[2q+8..2q+9][2t+1]
            d0 += Dot2<E>(x0, y0) + Dot2<E>(x2, y1);
            d1 += Dot2<E>(x0, w0) + Dot2<E>(x2, w1);
            d2 += Dot2<E>(x1, y0) + Dot2<E>(x3, y1);
            d3 += Dot2<E>(x1, w0) + Dot2<E>(x3, w1);
        }
        d.C0 = d0;
        d.C1 = d1;
        d.C2 = d2;
        d.C3 = d3;
    }

    /// <summary>lo(x) lo(y) + hi(x) hi(y) of two words of packed 16-bit values.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float Dot2<E>(uint x, uint y) where E : struct, IGemmElement<ushort>
    {
        E e = default;
        return e.ToFloat((ushort)(x & 0xFFFF)) * e.ToFloat((ushort)(y & 0xFFFF))
             + e.ToFloat((ushort)(x >> 16)) * e.ToFloat((ushort)(y >> 16));
    }
}
