/* tests/standin_native.c: the kumod natives the stand-in (tests/kumo_standin.py) makes
 * in C, because in kumod they are native Rust and a Python round trip through lupa would
 * make them the largest cost of a warm check:
 *
 *   userdata([mt])    a fresh, empty full userdata (metatable mt when given)
 *   sha256_hex(s)     the lowercase sha256 hex of the Lua string s's raw bytes
 *   binary_sha256(join, mt)   kumo.digest.sha256: a function of (...) whose result is a
 *                     userdata holding the 32 bytes of the digest with metatable mt;
 *                     one string is digested as it is, other arguments as join(...)
 *   binary_index(other), binary_hex   that userdata's __index (.hex in C, any other
 *                     field as other(field, hex)) and __tostring (the hex)
 *   sha256_hex_portable(s), sha256_block ("sha-ni" | "portable"): for the tests
 *
 * Built by kumo_standin.native_library() and loaded with package.loadlib, linked
 * against lupa's own lua54 extension module so that every lua_* call below goes to the
 * Lua that lupa runs. No Lua headers are needed: the few Lua 5.4 API prototypes are
 * declared here (lua_pushvalue etc. are functions in 5.4; only macros are avoided).
 * The sha256 is a plain FIPS 180-4 implementation, its block function in SHA extension
 * instructions where the CPU has them. */

#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef struct lua_State lua_State;
typedef int (*lua_CFunction)(lua_State *L);

extern void *lua_newuserdatauv(lua_State *L, size_t size, int nuvalue);
extern int lua_setmetatable(lua_State *L, int objindex);
extern int lua_type(lua_State *L, int idx);
extern void lua_pushvalue(lua_State *L, int idx);
extern const char *lua_pushlstring(lua_State *L, const char *s, size_t len);
extern const char *lua_pushstring(lua_State *L, const char *s);
extern void lua_pushcclosure(lua_State *L, lua_CFunction fn, int n);
extern void lua_createtable(lua_State *L, int narr, int nrec);
extern void lua_setfield(lua_State *L, int idx, const char *k);
extern int lua_gettop(lua_State *L);
extern void lua_settop(lua_State *L, int idx);
extern void lua_rotate(lua_State *L, int idx, int n);
extern void lua_callk(lua_State *L, int nargs, int nresults, ptrdiff_t ctx, void *k);
extern const char *lua_tolstring(lua_State *L, int idx, size_t *len);
extern void *lua_touserdata(lua_State *L, int idx);
extern unsigned long long lua_rawlen(lua_State *L, int idx);
extern const char *luaL_checklstring(lua_State *L, int arg, size_t *len);
extern void luaL_checktype(lua_State *L, int arg, int t);
extern int luaL_error(lua_State *L, const char *fmt, ...);

#define LUA_TNONE (-1)
#define LUA_TNIL 0
#define LUA_TSTRING 4
#define LUA_TTABLE 5
/* luaconf.h's defaults, as lupa builds Lua (checked in luaopen_standin_native) */
#define LUA_REGISTRYINDEX (-1000000 - 1000)
#define upvalue(i) (LUA_REGISTRYINDEX - (i))

/* ------------------------------------------------------------------ userdata */

static int standin_userdata(lua_State *L) {
    int t = lua_type(L, 1);
    if (t != LUA_TNONE && t != LUA_TNIL)
        luaL_checktype(L, 1, LUA_TTABLE);
    lua_newuserdatauv(L, 0, 0);
    if (t == LUA_TTABLE) {
        lua_pushvalue(L, 1);
        lua_setmetatable(L, -2);
    }
    return 1;
}

/* ------------------------------------------------------------------ sha256 */

static const uint32_t K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

#define ROTR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void sha256_block(uint32_t h[8], const unsigned char *p) {
    uint32_t w[64], a, b, c, d, e, f, g, k, t1, t2;
    int i;
    for (i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | (uint32_t)p[4 * i + 3];
    for (i = 16; i < 64; i++) {
        uint32_t s0 = ROTR(w[i - 15], 7) ^ ROTR(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ROTR(w[i - 2], 17) ^ ROTR(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    a = h[0]; b = h[1]; c = h[2]; d = h[3]; e = h[4]; f = h[5]; g = h[6]; k = h[7];
    for (i = 0; i < 64; i++) {
        t1 = k + (ROTR(e, 6) ^ ROTR(e, 11) ^ ROTR(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i];
        t2 = (ROTR(a, 2) ^ ROTR(a, 13) ^ ROTR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        k = g; g = f; f = e; e = d + t1;
        d = c; c = b; b = a; a = t1 + t2;
    }
    h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += k;
}

/* The same block with the x86 SHA extensions (kumod's sha2 crate uses them where the CPU
 * has them): state as ABEF / CDGH, four rounds per step, the message schedule by
 * sha256msg1/msg2. Chosen at run time by cpuid. */
#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#include <immintrin.h>

__attribute__((target("sha,sse4.1,ssse3")))
static void sha256_block_shani(uint32_t h[8], const unsigned char *p) {
    const __m128i bswap = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
    __m128i t = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)h), 0xB1);        /* CDAB */
    __m128i s1 = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)(h + 4)), 0x1B); /* EFGH */
    __m128i s0 = _mm_alignr_epi8(t, s1, 8);                                           /* ABEF */
    __m128i abef, cdgh, x[4], m;
    int i;
    s1 = _mm_blend_epi16(s1, t, 0xF0);                                                /* CDGH */
    abef = s0;
    cdgh = s1;
#pragma GCC unroll 16
    for (i = 0; i < 16; i++) {
        __m128i *w = &x[i & 3];
        if (i < 4)
            *w = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 16 * i)), bswap);
        else /* W[4i..4i+3] from the four words groups before (x[i & 3] is i - 4's) */
            *w = _mm_sha256msg2_epu32(
                _mm_add_epi32(_mm_sha256msg1_epu32(*w, x[(i + 1) & 3]),
                              _mm_alignr_epi8(x[(i + 3) & 3], x[(i + 2) & 3], 4)),
                x[(i + 3) & 3]);
        m = _mm_add_epi32(*w, _mm_loadu_si128((const __m128i *)(K + 4 * i)));
        s1 = _mm_sha256rnds2_epu32(s1, s0, m);
        s0 = _mm_sha256rnds2_epu32(s0, s1, _mm_shuffle_epi32(m, 0x0E));
    }
    s0 = _mm_add_epi32(s0, abef);
    s1 = _mm_add_epi32(s1, cdgh);
    t = _mm_shuffle_epi32(s0, 0x1B);                                                  /* FEBA */
    s1 = _mm_shuffle_epi32(s1, 0xB1);                                                 /* DCHG */
    _mm_storeu_si128((__m128i *)h, _mm_blend_epi16(t, s1, 0xF0));                     /* DCBA */
    _mm_storeu_si128((__m128i *)(h + 4), _mm_alignr_epi8(s1, t, 8));                  /* HGFE */
}

static int has_shani(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & bit_SSE4_1) || !(c & bit_SSSE3))
        return 0;
    return __get_cpuid_count(7, 0, &a, &b, &c, &d) && (b & bit_SHA);
}
#endif

typedef void (*block_fn)(uint32_t h[8], const unsigned char *p);
static block_fn best_block = sha256_block;

static void sha256(block_fn block, const unsigned char *data, size_t len, unsigned char out[32]) {
    uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                     0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    unsigned char tail[128];
    size_t full = len & ~(size_t)63, rest = len - full, padded;
    uint64_t bits = (uint64_t)len * 8;
    size_t i;
    for (i = 0; i < full; i += 64)
        block(h, data + i);
    /* the last bytes, 0x80, zeros, the length in bits big-endian: one or two blocks */
    memset(tail, 0, sizeof tail);
    if (rest)
        memcpy(tail, data + full, rest);
    tail[rest] = 0x80;
    padded = rest < 56 ? 64 : 128;
    for (i = 0; i < 8; i++)
        tail[padded - 1 - i] = (unsigned char)(bits >> (8 * i));
    block(h, tail);
    if (padded == 128)
        block(h, tail + 64);
    for (i = 0; i < 8; i++) {
        out[4 * i] = (unsigned char)(h[i] >> 24);
        out[4 * i + 1] = (unsigned char)(h[i] >> 16);
        out[4 * i + 2] = (unsigned char)(h[i] >> 8);
        out[4 * i + 3] = (unsigned char)h[i];
    }
}

static void push_hex(lua_State *L, const unsigned char raw[32]) {
    static const char digits[] = "0123456789abcdef";
    char hex[64];
    int i;
    for (i = 0; i < 32; i++) {
        hex[2 * i] = digits[raw[i] >> 4];
        hex[2 * i + 1] = digits[raw[i] & 15];
    }
    lua_pushlstring(L, hex, sizeof hex);
}

static int push_sha256_hex(lua_State *L, block_fn block) {
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    unsigned char raw[32];
    sha256(block, (const unsigned char *)s, len, raw);
    push_hex(L, raw);
    return 1;
}

static int standin_sha256_hex(lua_State *L) { return push_sha256_hex(L, best_block); }
/* the portable block function alone, for the tests on a CPU with SHA extensions */
static int standin_sha256_hex_portable(lua_State *L) { return push_sha256_hex(L, sha256_block); }

/* ------------------------------------------------------------------ BinaryResult */

/* upvalues: join, the metatable */
static int binary_sha256(lua_State *L) {
    size_t len;
    const char *s;
    int n = lua_gettop(L);
    if (n == 1 && lua_type(L, 1) == LUA_TSTRING) {
        s = lua_tolstring(L, 1, &len);
    } else {
        if (n == 0) { /* as the Lua path: sha256() is of a nil first argument */
            lua_settop(L, 1);
            n = 1;
        }
        lua_pushvalue(L, upvalue(1));
        lua_rotate(L, 1, 1);
        lua_callk(L, n, 1, 0, NULL);
        s = luaL_checklstring(L, -1, &len);
    }
    /* s stays on the stack (anchored) while the userdata is made */
    sha256(best_block, (const unsigned char *)s, len, lua_newuserdatauv(L, 32, 0));
    lua_pushvalue(L, upvalue(2));
    lua_setmetatable(L, -2);
    return 1;
}

static const unsigned char *binary_of(lua_State *L) {
    void *p = lua_touserdata(L, 1);
    if (p == NULL || lua_rawlen(L, 1) != 32)
        luaL_error(L, "a BinaryResult expected");
    return p;
}

/* upvalue: other(field, hex) */
static int binary_index(lua_State *L) {
    const unsigned char *raw = binary_of(L);
    size_t len;
    if (lua_type(L, 2) == LUA_TSTRING) {
        const char *k = lua_tolstring(L, 2, &len);
        if (len == 3 && memcmp(k, "hex", 3) == 0) {
            push_hex(L, raw);
            return 1;
        }
    }
    lua_pushvalue(L, upvalue(1));
    lua_pushvalue(L, 2);
    push_hex(L, raw);
    lua_callk(L, 2, 1, 0, NULL);
    return 1;
}

static int binary_hex(lua_State *L) {
    push_hex(L, binary_of(L));
    return 1;
}

static int new_binary_sha256(lua_State *L) {
    luaL_checktype(L, 1, 6 /* LUA_TFUNCTION */);
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_settop(L, 2);
    lua_pushcclosure(L, binary_sha256, 2);
    return 1;
}

static int new_binary_index(lua_State *L) {
    luaL_checktype(L, 1, 6 /* LUA_TFUNCTION */);
    lua_settop(L, 1);
    lua_pushcclosure(L, binary_index, 1);
    return 1;
}

/* ------------------------------------------------------------------ module */

static const struct { const char *name; lua_CFunction fn; } FUNCTIONS[] = {
    {"userdata", standin_userdata},
    {"sha256_hex", standin_sha256_hex},
    {"sha256_hex_portable", standin_sha256_hex_portable},
    {"binary_sha256", new_binary_sha256},
    {"binary_index", new_binary_index},
    {"binary_hex", binary_hex},
};

int luaopen_standin_native(lua_State *L) {
    size_t i;
#if defined(__x86_64__) && defined(__GNUC__)
    if (has_shani())
        best_block = sha256_block_shani;
#endif
    if (lua_type(L, LUA_REGISTRYINDEX) != LUA_TTABLE)
        return luaL_error(L, "this Lua's LUA_REGISTRYINDEX is not luaconf.h's default");
    lua_createtable(L, 0, (int)(sizeof FUNCTIONS / sizeof FUNCTIONS[0]) + 1);
    for (i = 0; i < sizeof FUNCTIONS / sizeof FUNCTIONS[0]; i++) {
        lua_pushcclosure(L, FUNCTIONS[i].fn, 0);
        lua_setfield(L, -2, FUNCTIONS[i].name);
    }
    lua_pushstring(L, best_block == sha256_block ? "portable" : "sha-ni");
    lua_setfield(L, -2, "sha256_block");
    return 1;
}
