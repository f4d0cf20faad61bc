"""Near-duplicate detection for training data: MinHash signatures and a compact LSH index.

A sample's text (the normalised query, a separator, the normalised response:
case folded, split on whitespace) is cut into word ``ngram``-shingles (5 by
default; a text shorter than that is one shingle). Its MinHash signature
estimates the Jaccard similarity of two shingle sets (Broder 1997, "On the
resemblance and containment of documents"); locality-sensitive hashing over
bands of the signature finds candidate pairs without comparing every pair
(Leskovec, Rajaraman and Ullman, "Mining of Massive Datasets", ch. 3).

The MinHash itself is datasketch's (2.x, ``affine32`` scheme): the same
permutations (``MinHash(num_perm, seed).permutations``), the same MurmurHash3
pre-mix and the same minimum, so a signature here equals
``datasketch.MinHash(num_perm, seed, hashfunc=<shingle hash>)`` after
``update_batch`` of the shingle hashes; it is only computed for a whole batch
of samples in one numpy pass (about 50x faster than one ``MinHash`` object per
sample). The band layout ``(b, r)`` is datasketch's ``MinHashLSH`` optimum for
the threshold, weighted towards recall (false negatives 0.95, false positives
0.05), because every candidate is then *verified*: a candidate pair is a near
duplicate only when the estimated Jaccard similarity (share of equal signature
values) is at least the threshold. datasketch's own ``MinHashLSH`` keeps a
Python dict entry and set per band and key (hundreds of bytes per sample);
:class:`NearDuplicateIndex` keeps sorted numpy arrays of 64-bit band keys
(12 bytes per band and sample) and 16-bit signature values (b-bit minwise
hashing, Li and Koenig 2010: two different 32-bit values agree in their low 16
bits with probability 2**-16, a negligible bias), about 200 bytes per sample in
all with 64 permutations, so millions of samples fit in a bounded budget.

Everything is deterministic (fixed seeds, CRC-32 word hashes), so a rerun
keeps the same survivors.
"""

from __future__ import annotations

import functools
import math
from typing import Iterable, Sequence

import numpy as np

__all__ = ["ExactDuplicateFilter", "MinHasher", "NearDuplicateFilter", "NearDuplicateIndex", "SortedKeys", "lsh_params",
           "shingle_tokens"]

_M64 = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit multiplier (golden ratio), wraps mod 2**64
_P64 = 0x100000001B3  # FNV-1a 64-bit prime: base of the polynomial word hash (odd, so invertible mod 2**64)
_P64_INV = pow(_P64, -1, 1 << 64)
_SEP_HASH = np.uint64(0x1F1F1F1F1F1F1F1F)  # the query/response boundary token (no word hashes to it in practice)
_PAD_HASH = np.uint64(0)  # pads a text shorter than ngram words to one shingle
_FMIX32 = (np.uint32(16), np.uint32(0x85EBCA6B), np.uint32(13), np.uint32(0xC2B2AE35), np.uint32(16))
_CHUNK_CHARS = 200_000  # characters per numpy pass (bounds the (num_perm x shingles) matrix at ~25 MB)
# Every code point str.split() splits on, as a lookup table (index min(cp, len - 1), whose entry is False)
_WS_TABLE = np.zeros(0x3002, dtype=bool)
_WS_TABLE[[ord(c) for c in "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005"
           "\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"]] = True


def shingle_tokens(query: str, response: str) -> list[str]:
    """The words a sample is shingled from: case-folded, whitespace-split query and response
    (``"\\x1f"`` stands for the boundary token).

    >>> shingle_tokens("Hello  World", "FINE")
    ['hello', 'world', '\\x1f', 'fine']
    """
    return query.casefold().split() + ["\x1f"] + response.casefold().split()


@functools.lru_cache(maxsize=32)
def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """Bands ``b`` and rows per band ``r`` for ``threshold`` (datasketch's optimum, recall-weighted).

    >>> lsh_params(0.9, 64)
    (6, 10)
    """
    from datasketch import MinHashLSH  # imports scipy.integrate (~0.5 s): only when near-dedup runs

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=(0.05, 0.95))
    return int(lsh.b), int(lsh.r)


def _fmix32(hv: np.ndarray) -> np.ndarray:
    s1, m1, s2, m2, s3 = _FMIX32
    hv = hv ^ (hv >> s1)
    hv = hv * m1
    hv = hv ^ (hv >> s2)
    hv = hv * m2
    return hv ^ (hv >> s3)


class MinHasher:
    """MinHash signatures of many samples at once.

    Tokenising and hashing are vectorised over a whole batch: the case-folded
    texts are joined, viewed as an array of code points (UTF-32), split where
    ``str.split()`` would split, and each word gets a 64-bit polynomial hash
    (base :data:`_P64`, mod 2**64) from prefix sums; a shingle hash combines
    ``ngram`` word hashes and is folded to 32 bits. The permutations, pre-mix
    and minimum are datasketch's ``affine32`` scheme.

    Args:
        num_perm: Signature length (permutations).
        ngram: Words per shingle.
        seed: datasketch permutation seed (1 is datasketch's default).

    Example:
        >>> mh = MinHasher(num_perm=64, ngram=5)
        >>> q = "How do I boil an egg?"
        >>> a = "Put the egg in boiling water for nine minutes, then cool it in cold water and peel it."
        >>> sig = mh.signatures([(q, a), (q, a.replace("peel", "PEEL")), (q, a.replace("nine", "ten"))])
        >>> sig.shape, sig.dtype.name
        ((3, 64), 'uint32')
        >>> bool((sig[0] == sig[1]).all())  # case is folded: the same shingles
        True
        >>> 0.5 < float((sig[0] == sig[2]).mean()) < 1.0  # one word of 23 changed: Jaccard 19/29
        True
    """

    def __init__(self, num_perm: int = 64, ngram: int = 5, seed: int = 1) -> None:
        if num_perm < 2:
            raise ValueError(f"num_perm must be >= 2, got {num_perm}")
        if ngram < 1:
            raise ValueError(f"ngram must be >= 1, got {ngram}")
        from datasketch import MinHash

        perms = MinHash(num_perm=num_perm, seed=seed, scheme="affine32").permutations
        self.num_perm = num_perm
        self.ngram = ngram
        self.seed = seed
        self._a = np.asarray(perms[0], dtype=np.uint32).reshape(-1, 1)
        self._b = np.asarray(perms[1], dtype=np.uint32).reshape(-1, 1)
        self._pow = np.ones(1, dtype=np.uint64)  # _P64 ** i, grown on demand
        self._ipow = np.ones(1, dtype=np.uint64)  # _P64_INV ** i

    def shingle_hashes(self, query: str, response: str) -> np.ndarray:
        """32-bit hashes of one sample's shingles (what datasketch's ``update_batch`` would be fed)."""
        words, lens = self._words([(query, response)])
        return self._combine(words, lens)

    def signatures(self, pairs: Iterable[tuple[str, str]]) -> np.ndarray:
        """Signatures of (query, response) pairs, shape ``(n, num_perm)``, uint32."""
        out: list[np.ndarray] = []
        chunk: list[tuple[str, str]] = []
        size = 0
        for pair in pairs:
            chunk.append(pair)
            size += len(pair[0]) + len(pair[1])
            if size >= _CHUNK_CHARS:
                out.append(self._signatures(chunk))
                chunk, size = [], 0
        if chunk or not out:
            out.append(self._signatures(chunk))
        return out[0] if len(out) == 1 else np.concatenate(out)

    def _signatures(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        if not pairs:
            return np.empty((0, self.num_perm), dtype=np.uint32)
        words, lens = self._words(pairs)
        shingles = self._combine(words, lens)
        counts = lens - self.ngram + 1
        first = np.cumsum(counts) - counts
        # (num_perm, shingles): the minimum runs along contiguous rows (5x faster than the transpose)
        phv = np.multiply(self._a, _fmix32(shingles).reshape(1, -1))  # uint32, wraps mod 2**32
        phv += self._b
        return np.ascontiguousarray(np.minimum.reduceat(phv, first, axis=1).T)

    def _powers(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        if len(self._pow) < n:
            size = max(n, 2 * len(self._pow))
            self._pow = np.concatenate([[np.uint64(1)], np.cumprod(np.full(size - 1, _P64, dtype=np.uint64))])
            self._ipow = np.concatenate([[np.uint64(1)], np.cumprod(np.full(size - 1, _P64_INV, dtype=np.uint64))])
        return self._pow[:n], self._ipow[:n]

    def _words(self, pairs: list[tuple[str, str]]) -> tuple[np.ndarray, np.ndarray]:
        """Word hashes of every sample back to back (query words, the boundary token, response
        words, padding to ``ngram``), and the number per sample."""
        segments = [text.casefold() for pair in pairs for text in pair]
        seg_len = np.fromiter(map(len, segments), dtype=np.int64, count=len(segments))
        seg_start = np.cumsum(seg_len + 1) - (seg_len + 1)  # segments joined by one space
        cp = np.frombuffer(" ".join(segments).encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        word = ~_WS_TABLE[np.minimum(cp, len(_WS_TABLE) - 1)]
        edges = np.diff(word.astype(np.int8), prepend=np.int8(0), append=np.int8(0))
        starts = np.flatnonzero(edges == 1)
        ends = np.flatnonzero(edges == -1)
        pw, ipw = self._powers(len(cp))
        prefix = np.zeros(len(cp) + 1, dtype=np.uint64)
        np.cumsum(cp.astype(np.uint64) * pw, out=prefix[1:])  # wraps mod 2**64
        hashes = (prefix[ends] - prefix[starts]) * ipw[starts]
        per_seg = np.bincount(np.searchsorted(seg_start, starts, side="right") - 1, minlength=len(segments))
        seg_first = np.cumsum(per_seg) - per_seg
        hashes = np.insert(hashes, seg_first[1::2], _SEP_HASH)  # before each response's first word
        lens = per_seg[0::2] + 1 + per_seg[1::2]
        short = np.maximum(self.ngram - lens, 0)
        if short.any():
            sample_end = np.cumsum(lens)
            hashes = np.insert(hashes, np.repeat(sample_end, short), _PAD_HASH)
            lens = lens + short
        return hashes, lens

    def _combine(self, words: np.ndarray, lens: np.ndarray) -> np.ndarray:
        """Shingle hashes (uint32) of samples laid out back to back in ``words`` (uint64)."""
        n = self.ngram
        starts = np.cumsum(lens) - lens
        counts = lens - n + 1
        first = np.cumsum(counts) - counts
        pos = np.arange(int(counts.sum()), dtype=np.int64) + np.repeat(starts - first, counts)
        h = words[pos]
        for k in range(1, n):
            h = h * _M64 + words[pos + k]
        return ((h ^ (h >> np.uint64(32))) & np.uint64(0xFFFFFFFF)).astype(np.uint32)


class NearDuplicateIndex:
    """Banded LSH index over MinHash signatures with verified matches.

    :meth:`add` indexes reference samples (history, rehearsal buffer);
    :meth:`filter` checks a batch of new samples, in order, against everything
    indexed and against the earlier survivors of the same batch, and indexes
    the survivors. Memory: about ``2 * num_perm + 12 * bands`` bytes per
    indexed sample.

    Args:
        threshold: Jaccard similarity at or above which two samples are near duplicates.
        num_perm: Signature length.
        capacity: Expected number of indexed samples (grows when exceeded).

    Example:
        >>> mh = MinHasher(64, 5)
        >>> idx = NearDuplicateIndex(0.9, 64)
        >>> text = " ".join(f"w{i}" for i in range(200))
        >>> edited = text.replace("w199", "changed")
        >>> other = " ".join(f"x{i}" for i in range(200))
        >>> idx.filter(mh.signatures([("q", text), ("q", edited), ("q", other)])).tolist()
        [True, False, True]
        >>> len(idx)
        2
    """

    def __init__(self, threshold: float, num_perm: int, *, capacity: int = 1024) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        self.threshold = threshold
        self.num_perm = num_perm
        self.bands, self.rows = lsh_params(threshold, num_perm)
        self._need = math.ceil(threshold * num_perm - 1e-9)  # equal values needed to verify
        self._seeds = (np.arange(1, self.bands + 1, dtype=np.uint64) * np.uint64(0xD6E8FEB86659FD93))
        self._sigs = np.empty((max(capacity, 16), num_perm), dtype=np.uint16)
        self._n = 0
        self._keys = SortedKeys()  # band key -> slot in _sigs

    def __len__(self) -> int:
        return self._n

    @property
    def nbytes(self) -> int:
        """Bytes held by the index arrays."""
        return int(self._sigs.nbytes + self._keys.nbytes)

    def band_keys(self, sigs: np.ndarray) -> np.ndarray:
        """64-bit key of each band of each signature, shape ``(n, bands)``."""
        x = sigs[:, : self.bands * self.rows].reshape(len(sigs), self.bands, self.rows).astype(np.uint64)
        k = np.broadcast_to(self._seeds, (len(sigs), self.bands)).copy()
        for j in range(self.rows):
            k = (k ^ x[:, :, j]) * _M64
        return k ^ (k >> np.uint64(29))

    def add(self, sigs: np.ndarray) -> None:
        """Index signatures without checking them (reference samples)."""
        if len(sigs):
            self._insert(sigs.astype(np.uint16), self.band_keys(sigs))

    def filter(self, sigs: np.ndarray) -> np.ndarray:
        """Keep-mask of a batch (True: not a near duplicate of anything earlier); indexes the kept ones."""
        n = len(sigs)
        if n == 0:
            return np.zeros(0, dtype=bool)
        low = sigs.astype(np.uint16)
        keys = self.band_keys(sigs)
        dup = np.zeros(n, dtype=bool)
        which, slots = self._keys.lookup(keys.ravel())
        if len(which):
            which //= self.bands
            ok = (self._sigs[slots] == low[which]).sum(axis=1) >= self._need
            dup[which[ok]] = True
        # within the batch, in order: only samples sharing a band key with another can match
        flat = keys[~dup].ravel()
        if len(flat):
            _, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
            shared = (counts[inverse] > 1).reshape(-1, self.bands).any(axis=1)
            todo = np.flatnonzero(~dup)[shared]
            if len(todo):
                local: dict[int, list[int]] = {}
                for i, row in zip(todo.tolist(), keys[todo].tolist()):
                    cands = {c for key in row for c in local.get(key, ())}
                    if cands:
                        c = np.fromiter(cands, dtype=np.int64, count=len(cands))
                        if ((low[c] == low[i]).sum(axis=1) >= self._need).any():
                            dup[i] = True
                            continue
                    for key in row:
                        local.setdefault(key, []).append(i)
        keep = ~dup
        if keep.any():
            self._insert(low[keep], keys[keep])
        return keep

    def _insert(self, low: np.ndarray, keys: np.ndarray) -> None:
        n = len(low)
        if self._n + n > len(self._sigs):
            grown = np.empty((max(self._n + n, len(self._sigs) * 3 // 2), self.num_perm), dtype=np.uint16)
            grown[: self._n] = self._sigs[: self._n]
            self._sigs = grown
        self._sigs[self._n: self._n + n] = low
        self._keys.insert(keys.ravel(), np.repeat(np.arange(self._n, self._n + n, dtype=np.uint32), self.bands))
        self._n += n


class SortedKeys:
    """A growing multiset of uint64 keys (with optional uint32 values) for batch lookups.

    Kept as a few sorted arrays whose sizes at least halve from one to the
    next, merged like a binary counter (a log-structured merge), so inserting
    n keys costs O(n log^2 n) in numpy and a lookup of a batch one
    ``searchsorted`` per array. Memory: 8 bytes per key (12 with values).

    Example:
        >>> s = SortedKeys()
        >>> s.insert(np.array([5, 1, 9], dtype=np.uint64))
        >>> s.contains(np.array([1, 2, 9], dtype=np.uint64)).tolist()
        [True, False, True]
    """

    def __init__(self) -> None:
        self._levels: list[tuple[np.ndarray, np.ndarray | None]] = []

    def __len__(self) -> int:
        return sum(len(k) for k, _ in self._levels)

    @property
    def nbytes(self) -> int:
        return int(sum(k.nbytes + (0 if v is None else v.nbytes) for k, v in self._levels))

    def insert(self, keys: np.ndarray, values: np.ndarray | None = None) -> None:
        if not len(keys):
            return
        order = np.argsort(keys, kind="stable")
        self._levels.append((keys[order], None if values is None else values[order]))
        while len(self._levels) > 1 and len(self._levels[-1][0]) * 2 >= len(self._levels[-2][0]):
            (k2, v2), (k1, v1) = self._levels.pop(), self._levels.pop()
            k = np.concatenate([k1, k2])
            order = np.argsort(k, kind="stable")
            v = None if v1 is None or v2 is None else np.concatenate([v1, v2])[order]
            self._levels.append((k[order], v))

    def contains(self, keys: np.ndarray) -> np.ndarray:
        """Mask of the keys present."""
        found = np.zeros(len(keys), dtype=bool)
        if not len(keys):
            return found
        order = np.argsort(keys)  # sorted needles: the binary searches walk the levels in order
        needles = keys[order]
        for level, _ in self._levels:
            pos = np.minimum(np.searchsorted(level, needles), len(level) - 1)
            found[order[level[pos] == needles]] = True
        return found

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every match as (index into ``keys``, stored value), for keys inserted with values."""
        whiches, values = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.uint32)]
        if not len(keys):
            return whiches[0], values[0]
        order = np.argsort(keys)
        needles = keys[order]
        for level, vals in self._levels:
            assert vals is not None, "lookup() needs keys inserted with values"
            lo = np.searchsorted(level, needles, side="left")
            hit = np.flatnonzero(level[np.minimum(lo, len(level) - 1)] == needles)
            if not len(hit):
                continue
            lo = lo[hit]
            cnt = np.searchsorted(level, needles[hit], side="right") - lo
            total = int(cnt.sum())
            offs = np.arange(total) - np.repeat(np.cumsum(cnt) - cnt, cnt)
            whiches.append(np.repeat(order[hit], cnt))
            values.append(vals[np.repeat(lo, cnt) + offs])
        return np.concatenate(whiches), np.concatenate(values)


class ExactDuplicateFilter:
    """First occurrences of content hashes, in order, in 8 bytes per distinct content.

    Keys are the first 64 bits of the 128-bit BLAKE2b content hash
    (:func:`afs_continuous._text.content_hash`): two different contents
    collide with probability 2**-64 per pair (under 3e-6 for any collision
    among ten million contents).

    Example:
        >>> f = ExactDuplicateFilter()
        >>> f.first_seen(["aa" * 16, "bb" * 16, "aa" * 16]).tolist(), f.first_seen(["bb" * 16, "cc" * 16]).tolist()
        ([True, True, False], [False, True])
    """

    def __init__(self) -> None:
        self._keys = SortedKeys()

    def __len__(self) -> int:
        return len(self._keys)

    def first_seen(self, hashes: Sequence[str]) -> np.ndarray:
        """Mask of the hashes not seen before (earlier in this batch or in an earlier batch); remembers them."""
        keys = np.fromiter((int(h[:16], 16) for h in hashes), dtype=np.uint64, count=len(hashes))
        mask = np.zeros(len(keys), dtype=bool)
        if len(keys):
            mask[np.unique(keys, return_index=True)[1]] = True
            mask &= ~self._keys.contains(keys)
            self._keys.insert(keys[mask])
        return mask


class NearDuplicateFilter:
    """A :class:`MinHasher` and a :class:`NearDuplicateIndex` over (query, response) pairs.

    Args:
        threshold: Jaccard similarity at or above which two samples are near duplicates.
        num_perm: Signature length.
        ngram: Words per shingle.
        capacity: Expected number of indexed samples.

    Example:
        >>> f = NearDuplicateFilter(0.9, 64, 5)
        >>> answer = " ".join(f"word{i}" for i in range(100))
        >>> f.add([("old question", answer)])
        >>> f.keep([("old question", answer + " indeed"), ("new question", "a different answer")]).tolist()
        [False, True]
    """

    def __init__(self, threshold: float, num_perm: int = 64, ngram: int = 5, *, capacity: int = 1024) -> None:
        self.hasher = MinHasher(num_perm, ngram)
        self.index = NearDuplicateIndex(threshold, num_perm, capacity=capacity)

    def add(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Index reference samples (no check)."""
        self.index.add(self.hasher.signatures(pairs))

    def keep(self, pairs: Iterable[tuple[str, str]]) -> np.ndarray:
        """Keep-mask of a batch in order (see :meth:`NearDuplicateIndex.filter`); the kept are indexed."""
        return self.index.filter(self.hasher.signatures(pairs))
