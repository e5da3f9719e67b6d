// wblocks.glsl - reading the block types' weights (TYPE: matmul.comp's
// codes 2 .. 9, 11, 12) for the prompt products: a chunk's 32 quants as
// exact int8s and its scales, unpacked as quant/ref_legacy.c and
// quant/ref_kquants.c do.  The including shader declares the weights'
// buffer w (uints), the push constants p (ow, cols, rows) and TYPE.

const bool KT = TYPE == 7u || TYPE == 8u || TYPE == 9u || TYPE == 11u || TYPE == 12u;
const bool LMIN = TYPE == 5u || TYPE == 6u;                // legacy m_w s_x term
const bool KMIN = TYPE == 7u || TYPE == 9u || TYPE == 11u; // K dmin term
const bool SC16 = TYPE == 8u || TYPE == 11u || TYPE == 12u; // 16-element sub-blocks

// halfwords per block (K: per super-block)
const uint BH = TYPE == 2u ? 17u : TYPE == 3u ? 9u : TYPE == 4u ? 11u : TYPE == 5u ? 10u :
                TYPE == 6u ? 12u : TYPE == 7u ? 72u : TYPE == 8u ? 105u : TYPE == 9u ? 88u :
                TYPE == 11u ? 42u : 55u;

uint half_at(uint h) { return (w.d[h >> 1] >> ((h & 1u) << 4)) & 0xFFFFu; }
uint word_at(uint h) { return (h & 1u) == 0u ? w.d[h >> 1] : half_at(h) | (half_at(h + 1u) << 16); }
uint byte_at(uint hb, uint i) { return (half_at(hb + (i >> 1)) >> (8u * (i & 1u))) & 0xFFu; }
// the 8 bytes from (even) halfword h
uvec2 bytes8(uint h) { return uvec2(word_at(h), word_at(h + 2u)); }
// four bits b to bit 0 of byte b
uint spread4(uint v) { return (v & 1u) | ((v & 2u) << 7) | ((v & 4u) << 14) | ((v & 8u) << 21); }
// each byte (below 128) minus off, as a signed int8
uvec2 minus(uvec2 v, uint off)
{
    const uint o = off * 0x01010101u;
    return ((v | 0x80808080u) - o) ^ 0x80808080u;
}
uint pack16(int a, int b) { return (uint(a) & 0xFFFFu) | (uint(b) << 16); }

// Elements 8 q .. 8 q + 7 of a 4/5-bit legacy block (TYPE 3 .. 6: f16 d
// (, m) (, 32 bits qh), 16 bytes qs) from its bytes 8 (q & 1) .. + 7 of
// qs and its qh: element e in the low nibble of byte e (e < 16) or the high
// one of byte e - 16, its fifth bit bit e of qh; as int8s.
uvec2 legacy_quants(uvec2 qs8, uint qh, uint q)
{
    uvec2 v = (qs8 >> (4u * (q >> 1))) & 0x0F0F0F0Fu;
    if (TYPE == 4u || TYPE == 6u) {
        const uint h = qh >> (8u * q);
        v |= uvec2(spread4(h), spread4(h >> 4)) << 4;
    }
    return minus(v, TYPE == 3u ? 8u : TYPE == 4u ? 16u : 0u);
}

// Elements 8 q .. 8 q + 7 of chunk j (0 for the legacy types, 0 .. 7 of a
// K super-block) of the block at halfword hb, as int8s (quant/blocks.h,
// unpacked as quant/ref_legacy.c and ref_kquants.c do).
uvec2 wquants(uint hb, uint j, uint q)
{
    if (TYPE == 2u)
        return bytes8(hb + 1u + 4u * q);
    if (TYPE <= 6u) {
        const bool hash = TYPE == 4u || TYPE == 6u;
        const uint qo = 1u + (LMIN ? 1u : 0u) + (hash ? 2u : 0u);
        return legacy_quants(bytes8(hb + qo + 4u * (q & 1u)), hash ? word_at(hb + qo - 2u) : 0u, q);
    }
    if (TYPE == 7u || TYPE == 9u) {
        // Q4_K (d, dmin, scales[12], qs[128]), Q5_K (qh[32] before qs):
        // element 32 j + l in nibble j & 1 of qs[32 (j / 2) + l], its fifth
        // bit bit j of qh[l]
        const bool q5 = TYPE == 9u;
        uvec2 v = (bytes8(hb + (q5 ? 24u : 8u) + 16u * (j >> 1) + 4u * q) >> (4u * (j & 1u))) &
                  0x0F0F0F0Fu;
        if (q5)
            v |= ((bytes8(hb + 8u + 4u * q) >> j) & 0x01010101u) << 4;
        return v;
    }
    if (TYPE == 8u) {
        // Q6_K (ql[128], qh[64], scales[16], d): element 32 j + l, c = j /
        // 4, k = j % 4: nibble k / 2 of ql[64 c + 32 (k & 1) + l], bits 2 k
        // of qh[32 c + l] above it, minus 32
        const uint c = j >> 2, k = j & 3u;
        const uvec2 lo = (bytes8(hb + 32u * c + 16u * (k & 1u) + 4u * q) >> (4u * (k >> 1))) &
                         0x0F0F0F0Fu;
        const uvec2 hi = (bytes8(hb + 64u + 16u * c + 4u * q) >> (2u * k)) & 0x03030303u;
        return minus(lo | (hi << 4), 32u);
    }
    // Q3_K (hmask[32], qs[64], scales[12], d), Q2_K (scales[16], qs[64],
    // d, dmin): element 32 j + l in bits 2 (j % 4) of qs[32 (j / 4) + l];
    // Q3_K's third bit bit j of hmask[l], minus 4
    const uvec2 lo = (bytes8(hb + (TYPE == 12u ? 16u : 8u) + 16u * (j >> 2) + 4u * q) >>
                      (2u * (j & 3u))) & 0x03030303u;
    if (TYPE == 11u)
        return lo;
    return minus(lo | (((bytes8(hb + 4u * q) >> j) & 0x01010101u) << 2), 4u);
}

// The scales of chunk j of the block at hb: d, the second scale m (m of
// Q4_1/Q5_1, dmin of the K types), the K types' integer scales sc and mins
// mn of the chunk (of its two 16-element halves: int16 pairs).
void wscales(uint hb, uint j, out float d, out float m, out uint sc, out uint mn)
{
    d = 0.0, m = 0.0;
    sc = 0u, mn = 0u;
    if (TYPE <= 6u) {
        d = f16_val(half_at(hb));
        m = LMIN ? f16_val(half_at(hb + 1u)) : 0.0;
    } else if (TYPE == 7u || TYPE == 9u) { // cm_k4_scale_min
        d = f16_val(half_at(hb));
        m = f16_val(half_at(hb + 1u));
        uint s, n;
        if (j < 4u) {
            s = byte_at(hb, 4u + j) & 63u;
            n = byte_at(hb, 8u + j) & 63u;
        } else {
            s = (byte_at(hb, 8u + j) & 0xFu) | ((byte_at(hb, j) >> 6) << 4);
            n = (byte_at(hb, 8u + j) >> 4) | ((byte_at(hb, 4u + j) >> 6) << 4);
        }
        sc = s, mn = n;
    } else if (TYPE == 8u) { // int8 scales[2 j], [2 j + 1]
        d = f16_val(half_at(hb + 104u));
        const uint h = half_at(hb + 96u + j);
        sc = pack16(bitfieldExtract(int(h), 0, 8), bitfieldExtract(int(h), 8, 8));
    } else if (TYPE == 12u) { // cm_k3_scales of sub-blocks 2 j, 2 j + 1
        d = f16_val(half_at(hb + 54u));
        int s[2];
        for (uint u = 0u; u < 2u; u++) {
            const uint k = 2u * j + u;
            const uint lo = (byte_at(hb, 96u + (k & 7u)) >> (4u * (k >> 3))) & 0xFu;
            const uint hi = (byte_at(hb, 104u + (k & 3u)) >> (2u * (k >> 2))) & 3u;
            s[u] = int(lo | (hi << 4)) - 32;
        }
        sc = pack16(s[0], s[1]);
    } else { // Q2_K: scale and min nibbles of bytes 2 j, 2 j + 1
        d = f16_val(half_at(hb + 40u));
        m = f16_val(half_at(hb + 41u));
        const uint h = half_at(hb + j);
        sc = (h & 0xFu) | ((h & 0xF00u) << 8);
        mn = ((h >> 4) & 0xFu) | ((h >> 12) << 16);
    }
}

// The block at halfword hb holding chunk kb of row r0 + r (the last row
// for those past it), and the chunk's index j in it.
uint block_of(uint r0, uint r, uint kb, out uint j)
{
    const uint row = min(r0 + r, p.rows - 1u), nb = p.cols / (KT ? 256u : 32u);
    j = KT ? kb & 7u : 0u;
    return p.ow + (row * nb + (KT ? kb >> 3 : kb)) * BH;
}
