/* tests/standin_native.c: the two kumod natives the stand-in (tests/kumo_standin.py)
 * makes in C, because in kumod they are native Rust and a Python round trip through
 * lupa would make them the largest cost of a warm check:
 *
 *   userdata([mt])    a fresh, empty full userdata (metatable mt when given)
 *   sha256_hex(s)     the lowercase sha256 hex of the Lua string s's raw bytes
 *
 * Built by kumo_standin.native_library() and loaded with package.loadlib, linked
 * against lupa's own lua54 extension module so that every lua_* call below goes to the
 * Lua that lupa runs. No Lua headers are needed: the few Lua 5.4 API prototypes are
 * declared here (lua_pushvalue etc. are functions in 5.4; only macros are avoided).
 * The sha256 is a plain FIPS 180-4 implementation. */

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
extern void lua_pushcclosure(lua_State *L, lua_CFunction fn, int n);
extern void lua_createtable(lua_State *L, int narr, int nrec);
extern void lua_setfield(lua_State *L, int idx, const char *k);
extern const char *luaL_checklstring(lua_State *L, int arg, size_t *len);
extern void luaL_checktype(lua_State *L, int arg, int t);

#define LUA_TNONE (-1)
#define LUA_TNIL 0
#define LUA_TTABLE 5

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

static void sha256(const unsigned char *data, size_t len, unsigned char out[32]) {
    uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                     0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    unsigned char tail[128];
    size_t full = len & ~(size_t)63, rest = len - full, padded;
    uint64_t bits = (uint64_t)len * 8;
    size_t i;
    for (i = 0; i < full; i += 64)
        sha256_block(h, data + i);
    /* the last bytes, 0x80, zeros, the length in bits big-endian: one or two blocks */
    memset(tail, 0, sizeof tail);
    if (rest)
        memcpy(tail, data + full, rest);
    tail[rest] = 0x80;
    padded = rest < 56 ? 64 : 128;
    for (i = 0; i < 8; i++)
        tail[padded - 1 - i] = (unsigned char)(bits >> (8 * i));
    sha256_block(h, tail);
    if (padded == 128)
        sha256_block(h, tail + 64);
    for (i = 0; i < 8; i++) {
        out[4 * i] = (unsigned char)(h[i] >> 24);
        out[4 * i + 1] = (unsigned char)(h[i] >> 16);
        out[4 * i + 2] = (unsigned char)(h[i] >> 8);
        out[4 * i + 3] = (unsigned char)h[i];
    }
}

static int standin_sha256_hex(lua_State *L) {
    static const char digits[] = "0123456789abcdef";
    size_t len, i;
    const char *s = luaL_checklstring(L, 1, &len);
    unsigned char raw[32];
    char hex[64];
    sha256((const unsigned char *)s, len, raw);
    for (i = 0; i < 32; i++) {
        hex[2 * i] = digits[raw[i] >> 4];
        hex[2 * i + 1] = digits[raw[i] & 15];
    }
    lua_pushlstring(L, hex, sizeof hex);
    return 1;
}

/* ------------------------------------------------------------------ module */

int luaopen_standin_native(lua_State *L) {
    lua_createtable(L, 0, 2);
    lua_pushcclosure(L, standin_userdata, 0);
    lua_setfield(L, -2, "userdata");
    lua_pushcclosure(L, standin_sha256_hex, 0);
    lua_setfield(L, -2, "sha256_hex");
    return 1;
}
