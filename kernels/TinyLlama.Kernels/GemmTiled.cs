// GEMM version 2 (see GemmKernels.cs): shared-memory tiles with register blocking, any input types.
//
// Tiling: a group of 256 threads owns a BM x BN = 128 x 64 tile of c (grid x over column tiles, y over
// row tiles, z over the batch). K advances BK = 16 at a time: the group copies a 128 x 16 tile of a and a
// 16 x 64 tile of b into shared memory, widened to f32, both stored k-major (sA[k][m], sB[k][n]) so that
// the inner loop reads one row of each. Thread (tx, ty) = (tid % 16, tid / 16) owns the 8 x 4 block of c
// at rows ty + 16 i (i < 8) and columns tx + 16 j (j < 4): interleaved rather than contiguous so that a
// warp's shared loads hit 2 addresses of sA (broadcast) and 16 consecutive words of sB (no conflicts),
// and its stores to c are 16 consecutive columns.
//
// Per K step a thread loads 8 values of a and 4 of b from shared memory and does 32 FMAs. Each thread
// copies 8 elements of the a tile and 4 of the b tile per K tile; the copy order follows whichever
// stride of the operand is 1 (a k-contiguous a is read along k, an m-contiguous one along m), so
// row-major and transposed operands both load coalesced, and any other stride still works. The next K
// tile is loaded into registers before the current one is multiplied, hiding global latency behind
// the FMAs with a single shared buffer (two barriers per K tile).
//
// Global traffic: a is read N / 64 times, b M / 128 times. Shared memory: (16 x 132 + 16 x 68) x 4 B
// = 12.5 KiB per group. Edges: out-of-range elements load as 0 and out-of-range outputs are not stored,
// so M, N and K need not be multiples of anything.
using System.Runtime.CompilerServices;
using ILGPU;

namespace TinyLlama.Kernels;

public static partial class GemmKernels
{
    internal const int TiledBM = 128;
    internal const int TiledBN = 64;
    internal const int TiledBK = 16;
    internal const int TiledThreads = 256;
    /// <summary>Row length of sA and sB: padded by 4 words so the transposing stores spread over banks.</summary>
    internal const int TiledLdA = TiledBM + 4;
    internal const int TiledLdB = TiledBN + 4;
    internal const int TiledSharedBytes = (TiledBK * TiledLdA + TiledBK * TiledLdB) * sizeof(float);

    /// <summary>Version 2: c[z] = a[z] @ b[z] (+ c[z]) with 128 x 64 tiles and 8 x 4 blocks per thread.</summary>
    internal static void MatMulForwardKernel2<TA, EA, TB, EB, TC, EC>(ArrayView<TA> a, ArrayView<TB> b, ArrayView<TC> c, GemmParams p)
        where TA : unmanaged where EA : struct, IGemmElement<TA>
        where TB : unmanaged where EB : struct, IGemmElement<TB>
        where TC : unmanaged where EC : struct, IGemmElement<TC>
    {
        var sA = SharedMemory.Allocate<float>(TiledBK * TiledLdA);   // sA is (BK, BM), row length TiledLdA
        var sB = SharedMemory.Allocate<float>(TiledBK * TiledLdB);   // sB is (BK, BN), row length TiledLdB
        int tid = Group.IdxX;
        int tx = tid & 15, ty = tid >> 4;
        int m0 = Grid.IdxY * TiledBM, n0 = Grid.IdxX * TiledBN;
        // Copy order of each operand: along its unit stride (either order is correct).
        bool aAlongK = p.AColStride == 1;
        bool bAlongN = p.BColStride == 1;
        int kTiles = (p.K + TiledBK - 1) / TiledBK;

        for (int z = Grid.IdxZ; z < p.BatchCount; z += Grid.DimZ)
        {
            int aBase = p.ABase(z), bBase = p.BBase(z);
            Acc4x4 top = default;      // rows ty + 16 i, i < 4
            Acc4x4 bottom = default;   // rows ty + 64 + 16 i
            // The K tile in flight: this thread's 8 elements of the a tile and 4 of the b tile.
            float ra0 = 0, ra1 = 0, ra2 = 0, ra3 = 0, ra4 = 0, ra5 = 0, ra6 = 0, ra7 = 0;
            float rb0 = 0, rb1 = 0, rb2 = 0, rb3 = 0;
            if (kTiles > 0)
            {
                ra0 = LoadTileA<TA, EA>(a, p, aBase, m0, 0, tid, aAlongK);
                ra1 = LoadTileA<TA, EA>(a, p, aBase, m0, 0, tid + 256, aAlongK);
                ra2 = LoadTileA<TA, EA>(a, p, aBase, m0, 0, tid + 512, aAlongK);
                ra3 = LoadTileA<TA, EA>(a, p, aBase, m0, 0, tid + 768, aAlongK);
                ra4 = LoadTileA<TA, EA>(a, p, aBase, m0, 0, tid + 1024, aAlongK);
                ra5 = LoadTileA<TA, EA>(a, p, aBase, m0, 0, tid + 1280, aAlongK);
                ra6 = LoadTileA<TA, EA>(a, p, aBase, m0, 0, tid + 1536, aAlongK);
                ra7 = LoadTileA<TA, EA>(a, p, aBase, m0, 0, tid + 1792, aAlongK);
                rb0 = LoadTileB<TB, EB>(b, p, bBase, n0, 0, tid, bAlongN);
                rb1 = LoadTileB<TB, EB>(b, p, bBase, n0, 0, tid + 256, bAlongN);
                rb2 = LoadTileB<TB, EB>(b, p, bBase, n0, 0, tid + 512, bAlongN);
                rb3 = LoadTileB<TB, EB>(b, p, bBase, n0, 0, tid + 768, bAlongN);
            }
            for (int t = 0; t < kTiles; t++)
            {
                StoreTileA(sA, tid, aAlongK, ra0);
                StoreTileA(sA, tid + 256, aAlongK, ra1);
                StoreTileA(sA, tid + 512, aAlongK, ra2);
                StoreTileA(sA, tid + 768, aAlongK, ra3);
                StoreTileA(sA, tid + 1024, aAlongK, ra4);
                StoreTileA(sA, tid + 1280, aAlongK, ra5);
                StoreTileA(sA, tid + 1536, aAlongK, ra6);
                StoreTileA(sA, tid + 1792, aAlongK, ra7);
                StoreTileB(sB, tid, bAlongN, rb0);
                StoreTileB(sB, tid + 256, bAlongN, rb1);
                StoreTileB(sB, tid + 512, bAlongN, rb2);
                StoreTileB(sB, tid + 768, bAlongN, rb3);
                Group.Barrier();

                if (t + 1 < kTiles)
                {
                    int k0 = (t + 1) * TiledBK;
                    ra0 = LoadTileA<TA, EA>(a, p, aBase, m0, k0, tid, aAlongK);
                    ra1 = LoadTileA<TA, EA>(a, p, aBase, m0, k0, tid + 256, aAlongK);
                    ra2 = LoadTileA<TA, EA>(a, p, aBase, m0, k0, tid + 512, aAlongK);
                    ra3 = LoadTileA<TA, EA>(a, p, aBase, m0, k0, tid + 768, aAlongK);
                    ra4 = LoadTileA<TA, EA>(a, p, aBase, m0, k0, tid + 1024, aAlongK);
                    ra5 = LoadTileA<TA, EA>(a, p, aBase, m0, k0, tid + 1280, aAlongK);
                    ra6 = LoadTileA<TA, EA>(a, p, aBase, m0, k0, tid + 1536, aAlongK);
                    ra7 = LoadTileA<TA, EA>(a, p, aBase, m0, k0, tid + 1792, aAlongK);
                    rb0 = LoadTileB<TB, EB>(b, p, bBase, n0, k0, tid, bAlongN);
                    rb1 = LoadTileB<TB, EB>(b, p, bBase, n0, k0, tid + 256, bAlongN);
                    rb2 = LoadTileB<TB, EB>(b, p, bBase, n0, k0, tid + 512, bAlongN);
                    rb3 = LoadTileB<TB, EB>(b, p, bBase, n0, k0, tid + 768, bAlongN);
                }

                for (int kk = 0; kk < TiledBK; kk++)
                {
                    int ia = kk * TiledLdA + ty;
                    int ib = kk * TiledLdB + tx;
                    float b0 = sB[ib], b1 = sB[ib + 16], b2 = sB[ib + 32], b3 = sB[ib + 48];
                    top.Fma(sA[ia], sA[ia + 16], sA[ia + 32], sA[ia + 48], b0, b1, b2, b3);
                    bottom.Fma(sA[ia + 64], sA[ia + 80], sA[ia + 96], sA[ia + 112], b0, b1, b2, b3);
                }
                Group.Barrier();
            }

            int cBase = p.CBase(z);
            for (int i = 0; i < 4; i++)
                for (int j = 0; j < 4; j++)
                {
                    StoreC<TC, EC>(c, p, cBase, m0 + ty + 16 * i, n0 + tx + 16 * j, top.Get(i, j));
                    StoreC<TC, EC>(c, p, cBase, m0 + ty + 64 + 16 * i, n0 + tx + 16 * j, bottom.Get(i, j));
                }
        }
    }

    /// <summary>
    /// Element e (0..2047) of the 128 x 16 a tile at (m0, k0), widened to f32; 0 outside a. Out-of-range
    /// elements read index 0 (always valid) and discard it, so no load is ever out of bounds.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static float LoadTileA<TA, EA>(ArrayView<TA> a, GemmParams p, int aBase, int m0, int k0, int e, bool alongK)
        where TA : unmanaged where EA : struct, IGemmElement<TA>
    {
        int m = m0 + (alongK ? e >> 4 : e & 127);
        int k = k0 + (alongK ? e & 15 : e >> 7);
        bool inside = m < p.M && k < p.K;
        float v = default(EA).ToFloat(a[inside ? aBase + m * p.ARowStride + k * p.AColStride : 0]);
        return inside ? v : 0f;
    }

    /// <summary>Stores element e of the a tile (see <see cref="LoadTileA"/>) at sA[k][m].</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void StoreTileA(ArrayView<float> sA, int e, bool alongK, float v)
    {
        int m = alongK ? e >> 4 : e & 127;
        int k = alongK ? e & 15 : e >> 7;
        sA[k * TiledLdA + m] = v;
    }

    /// <summary>Element e (0..1023) of the 16 x 64 b tile at (k0, n0), widened to f32; 0 outside b.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float LoadTileB<TB, EB>(ArrayView<TB> b, GemmParams p, int bBase, int n0, int k0, int e, bool alongN)
        where TB : unmanaged where EB : struct, IGemmElement<TB>
    {
        int n = n0 + (alongN ? e & 63 : e >> 4);
        int k = k0 + (alongN ? e >> 6 : e & 15);
        bool inside = n < p.N && k < p.K;
        float v = default(EB).ToFloat(b[inside ? bBase + k * p.BRowStride + n * p.BColStride : 0]);
        return inside ? v : 0f;
    }

    /// <summary>Stores element e of the b tile at sB[k][n].</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void StoreTileB(ArrayView<float> sB, int e, bool alongN, float v)
    {
        int n = alongN ? e & 63 : e >> 4;
        int k = alongN ? e >> 6 : e & 15;
        sB[k * TiledLdB + n] = v;
    }

    /// <summary>c[row, col] = v (or += v when accumulating), narrowed to c's type; nothing outside c.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void StoreC<TC, EC>(ArrayView<TC> c, GemmParams p, int cBase, int row, int col, float v)
        where TC : unmanaged where EC : struct, IGemmElement<TC>
    {
        if (row >= p.M || col >= p.N) return;
        int ci = cBase + row * p.CRowStride + col * p.CColStride;
        EC ec = default;
        if (p.Accumulate != 0) v += ec.ToFloat(c[ci]);
        c[ci] = ec.FromFloat(v);
    }
}
