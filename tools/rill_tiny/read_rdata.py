"""Reads the character vectors out of an R lazy-load database (NAME.rdx + NAME.rdb), as R packages ship their
data, without R. Only the subset of R's XDR serialization format that data frames of text use is handled:
vectors (character, integer, logical, double, list), pairlists of attributes, symbols and references.
Format: R Internals, "Serialization formats"."""
import gzip
import struct
import sys
import zlib


class Reader:
    def __init__(self, data):
        self.d, self.p, self.refs = data, 0, []

    def int(self):
        (v,) = struct.unpack_from(">i", self.d, self.p)
        self.p += 4
        return v

    def length(self):
        n = self.int()
        if n == -1:  # long vector: two more ints
            hi, lo = self.int(), self.int()
            n = (hi << 32) + lo
        return n

    def item(self):
        flags = self.int()
        t = flags & 0xFF
        has_attr, has_tag = bool(flags & (1 << 9)), bool(flags & (1 << 10))
        if t == 254 or t == 242:  # NILVALUE, EMPTYENV
            return None
        if t == 255:  # REFSXP
            idx = flags >> 8
            return self.refs[(idx if idx else self.int()) - 1]
        if t == 1:  # SYMSXP
            name = self.item()
            self.refs.append(name)
            return name
        if t == 9:  # CHARSXP
            n = self.int()
            if n == -1:
                return None  # NA_character_
            s = self.d[self.p:self.p + n].decode("utf-8", "replace")
            self.p += n
            return s
        if t in (2, 17):  # LISTSXP (pairlist), ATTRLISTSXP
            out = []
            while True:
                attr = self.item() if has_attr else None
                tag = self.item() if has_tag else None
                out.append((tag, self.item()))
                flags = self.int()
                t = flags & 0xFF
                if t == 254:
                    return dict(out)
                if t not in (2, 17):
                    raise ValueError(f"unexpected pairlist continuation type {t}")
                has_attr, has_tag = bool(flags & (1 << 9)), bool(flags & (1 << 10))
        if t == 16:  # STRSXP
            v = [self.item() for _ in range(self.length())]
        elif t == 19 or t == 20:  # VECSXP, EXPRSXP
            v = [self.item() for _ in range(self.length())]
        elif t in (10, 13):  # LGLSXP, INTSXP
            n = self.length()
            v = list(struct.unpack_from(f">{n}i", self.d, self.p))
            self.p += 4 * n
        elif t == 14:  # REALSXP
            n = self.length()
            v = list(struct.unpack_from(f">{n}d", self.d, self.p))
            self.p += 8 * n
        else:
            raise ValueError(f"R type {t} is not handled")
        attrs = self.item() if has_attr else None
        return (v, attrs) if attrs else v


def unserialize(blob):
    r = Reader(blob)
    if blob[:2] != b"X\n":
        raise ValueError("not XDR-serialized R data")
    r.p = 2
    version = r.int()
    r.int(), r.int()  # writer and minimal reader versions
    if version == 3:
        n = r.int()  # native encoding name
        r.p += n
    return r.item()


def lazyload(prefix):
    """{object name: value} of an R lazy-load database."""
    def chunk(data, offset, length):  # 4 bytes of uncompressed size, then zlib
        return unserialize(zlib.decompress(data[offset + 4:offset + length]))

    index = unserialize(gzip.decompress(open(prefix + ".rdx", "rb").read()))
    parts, _ = index  # list(variables, references, compressed) with its names
    values, attrs = parts[0]  # the variables: a list of (offset, length), named
    names = attrs["names"]
    rdb = open(prefix + ".rdb", "rb").read()
    return {name: chunk(rdb, *pos) for name, pos in zip(names, values)}


if __name__ == "__main__":
    for name, value in lazyload(sys.argv[1]).items():
        print(name, type(value).__name__, str(value)[:200])
