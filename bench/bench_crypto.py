"""Cost of kms's formats against the raw primitive, measured in the same run.

(a) fields: 1 KB encrypt+decrypt through kms.envelope (cached DataKey) vs raw AESGCM with a fresh nonce and a 36-byte
    AAD. Target: kms costs <= 2x raw.
(b) files: kms.stream encrypt_file / decrypt_file from an in-memory source to a null sink vs raw AESGCM over the same
    bytes chunked at the same segment size (no I/O). Target: kms >= 50% of raw throughput. Also the push APIs
    (StreamEncryptor.update fed 64 KiB chunks, as an upload is; iter_decrypt, as a download is) and a segment-size
    sweep, which is how DEFAULT_SEGMENT_SIZE was chosen.

(c) the SM suite (crypto_suite = "sm"): 1 KB fields through kms.envelope with an SM4 DataKey vs raw SM4-GCM
    (kms.suites.SM4GCM, a fresh nonce per pair), and files through encrypt_file / decrypt_file vs raw SM4-GCM chunked
    at the same segment size. SM4 has no AES-NI: expect a fraction of the AES figures.

Figures are the median of 5 repeats with the best in brackets; ratios compare medians from this run.
Usage: python bench/bench_crypto.py [--quick] [--mb N]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kms import DataKey, envelope, stream, suites

REPEATS = 5


class NullSink:
    def write(self, data) -> int:
        return len(data)


def timed(fn, repeats: int = REPEATS) -> tuple[float, float]:
    """(median seconds, best seconds) of fn()."""
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs), min(runs)


def interleaved(*fns, repeats: int = REPEATS) -> list[tuple[float, float]]:
    """Like timed() for several variants, alternating them each repeat so a burst of load on the shared machine hits
    all variants alike (ratios stay meaningful even when absolute figures wobble)."""
    runs: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, out in zip(fns, runs, strict=True):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return [(statistics.median(r), min(r)) for r in runs]


def bench_fields(iterations: int) -> None:
    key = DataKey.generate()
    raw = AESGCM(key.material())
    payload = os.urandom(1024)
    aad36 = os.urandom(36)
    field_ad = envelope.field_aad(table="records", column="title", row_id="6f1c2a9e-0d1b-4c55-9a51-3f0c7e3d2b11",
                                  patient_id="b7e0c1d2-8a4f-4e3b-9c6d-1f2e3a4b5c6d")
    encrypt, decrypt = envelope.encrypt, envelope.decrypt

    def kms_loop():
        for _ in range(iterations):
            decrypt(key, encrypt(key, payload, field_ad), field_ad)

    def kms_loop_with_aad():
        for _ in range(iterations):
            ad = envelope.field_aad(table="records", column="title", row_id="6f1c2a9e-0d1b-4c55-9a51-3f0c7e3d2b11",
                                    patient_id="b7e0c1d2-8a4f-4e3b-9c6d-1f2e3a4b5c6d")
            decrypt(key, encrypt(key, payload, ad), ad)

    def raw_loop():
        urandom = os.urandom
        for _ in range(iterations):
            nonce = urandom(12)
            raw.decrypt(nonce, raw.encrypt(nonce, payload, aad36), aad36)

    (raw_med, raw_best), (kms_med, kms_best), (aad_med, aad_best) = interleaved(
        raw_loop, kms_loop, kms_loop_with_aad, repeats=2 * REPEATS + 1)
    us = lambda s: s / iterations * 1e6
    print(f"(a) 1 KB field encrypt+decrypt, {iterations} pairs per repeat")
    print(f"    raw AESGCM (fresh nonce, 36 B AAD)     {us(raw_med):6.2f} us/pair  ({us(raw_best):.2f})"
          f"  {iterations / raw_med:10,.0f} pairs/s")
    print(f"    kms.envelope (cached DataKey)          {us(kms_med):6.2f} us/pair  ({us(kms_best):.2f})"
          f"  {iterations / kms_med:10,.0f} pairs/s")
    print(f"    kms.envelope + field_aad() per pair    {us(aad_med):6.2f} us/pair  ({us(aad_best):.2f})")
    ratio = kms_med / raw_med
    print(f"    cost ratio kms/raw = {ratio:.2f}x  (target <= 2x: {'OK' if ratio <= 2 else 'MISSED'});"
          f" with field_aad per pair {aad_med / raw_med:.2f}x")


def bench_stream(megabytes: int, segment: int, *, verbose: bool) -> dict[str, float]:
    """MB/s medians (and bests) for raw chunked AESGCM and the kms stream APIs, alternating variants each repeat."""
    key = DataKey.generate()
    aead = AESGCM(key.material())
    data = os.urandom(megabytes * 1024 * 1024)
    size_mb = len(data) / 1e6
    header = os.urandom(49)
    nonce_prefix = os.urandom(7)
    offsets = range(0, len(data), segment)
    view = memoryview(data)
    # The raw reference keeps no output (as a sink would not): it measures the primitive over segment-sized calls.
    sealed_chunks = [aead.encrypt(nonce_prefix + i.to_bytes(4, "big") + b"\0", view[pos:pos + segment], header)
                     for i, pos in enumerate(offsets)]

    def raw_enc():
        for i, pos in enumerate(offsets):
            aead.encrypt(nonce_prefix + i.to_bytes(4, "big") + b"\0", view[pos:pos + segment], header)

    def raw_dec():
        for i, chunk in enumerate(sealed_chunks):
            aead.decrypt(nonce_prefix + i.to_bytes(4, "big") + b"\0", chunk, header)

    blob = io.BytesIO()
    stream.encrypt_file(key, io.BytesIO(data), blob, b"ad", segment_size=segment)
    ciphertext = blob.getvalue()
    del blob

    def kms_enc():
        stream.encrypt_file(key, io.BytesIO(data), NullSink(), b"ad", segment_size=segment)

    def kms_dec():
        stream.decrypt_file(key, io.BytesIO(ciphertext), NullSink(), b"ad")

    def push_enc():
        enc = stream.StreamEncryptor(key, b"ad", segment_size=segment)
        for pos in range(0, len(data), 64 * 1024):
            enc.update(view[pos:pos + 64 * 1024])
        enc.finalize()

    def pull_dec():
        for _ in stream.iter_decrypt(key, io.BytesIO(ciphertext), b"ad"):
            pass

    def bytesio_enc():
        stream.encrypt_file(key, io.BytesIO(data), io.BytesIO(), b"ad", segment_size=segment)

    variants = {"raw_enc": raw_enc, "kms_enc": kms_enc, "raw_dec": raw_dec, "kms_dec": kms_dec,
                "push_enc": push_enc, "pull_dec": pull_dec}
    if verbose:
        variants["bytesio_enc"] = bytesio_enc
    for fn in variants.values():  # warm-up: first passes pay first-touch page faults
        fn()
    results = dict(zip(variants, interleaved(*variants.values()), strict=True))
    out = {name: size_mb / med for name, (med, _) in results.items()}
    out.update({name + "_best": size_mb / best for name, (_, best) in results.items()})
    if verbose:
        r = out
        enc_ratio, dec_ratio = r["kms_enc"] / r["raw_enc"], r["kms_dec"] / r["raw_dec"]
        print(f"(b) streaming {megabytes} MB, segment {segment // 1024} KiB (MB/s, median (best))")
        print(f"    encrypt: raw AESGCM chunked {r['raw_enc']:6.0f} ({r['raw_enc_best']:.0f})"
              f" | kms encrypt_file -> null sink {r['kms_enc']:6.0f} ({r['kms_enc_best']:.0f})"
              f"  kms/raw {enc_ratio:.2f}  (target >= 0.50: {'OK' if enc_ratio >= .5 else 'MISSED'})")
        print(f"    decrypt: raw AESGCM chunked {r['raw_dec']:6.0f} ({r['raw_dec_best']:.0f})"
              f" | kms decrypt_file -> null sink {r['kms_dec']:6.0f} ({r['kms_dec_best']:.0f})"
              f"  kms/raw {dec_ratio:.2f}  (target >= 0.50: {'OK' if dec_ratio >= .5 else 'MISSED'})")
        print(f"    kms encrypt_file -> BytesIO sink {r['bytesio_enc']:6.0f} ({r['bytesio_enc_best']:.0f})")
        print(f"    StreamEncryptor.update fed 64 KiB chunks {r['push_enc']:6.0f} ({r['push_enc_best']:.0f})"
              f" | iter_decrypt (1 MiB reads) {r['pull_dec']:6.0f} ({r['pull_dec_best']:.0f})")
    return out


def bench_sm(iterations: int, megabytes: int, segment: int) -> None:
    """(c): the SM4-GCM figures, each against raw SM4-GCM in the same run."""
    key = DataKey.generate(suite=suites.SM4_GCM)
    raw = suites.SM4GCM(key.material())
    payload, aad36 = os.urandom(1024), os.urandom(36)
    field_ad = envelope.field_aad(table="records", column="title", row_id="6f1c2a9e-0d1b-4c55-9a51-3f0c7e3d2b11",
                                  patient_id="b7e0c1d2-8a4f-4e3b-9c6d-1f2e3a4b5c6d")

    def raw_fields():
        for _ in range(iterations):
            nonce = os.urandom(12)
            raw.decrypt(nonce, raw.encrypt(nonce, payload, aad36), aad36)

    def kms_fields():
        for _ in range(iterations):
            envelope.decrypt(key, envelope.encrypt(key, payload, field_ad), field_ad)

    (raw_med, _), (kms_med, _) = interleaved(raw_fields, kms_fields)
    us = lambda t: t / iterations * 1e6
    print(f"(c) SM suite: 1 KB field encrypt+decrypt, {iterations} pairs per repeat")
    print(f"    raw SM4-GCM {us(raw_med):6.2f} us/pair | kms.envelope (SM4 DataKey) {us(kms_med):6.2f} us/pair"
          f"  kms/raw {kms_med / raw_med:.2f}x  ({iterations / kms_med:,.0f} pairs/s)")
    data = os.urandom(megabytes * 1024 * 1024)
    view, header, prefix = memoryview(data), os.urandom(49), os.urandom(7)
    offsets = range(0, len(data), segment)
    blob = io.BytesIO()
    stream.encrypt_file(key, io.BytesIO(data), blob, b"ad", segment_size=segment)
    ciphertext = blob.getvalue()
    sealed = [raw.encrypt(prefix + i.to_bytes(4, "big") + b"\0", view[pos:pos + segment], header)
              for i, pos in enumerate(offsets)]

    def raw_enc():
        for i, pos in enumerate(offsets):
            raw.encrypt(prefix + i.to_bytes(4, "big") + b"\0", view[pos:pos + segment], header)

    def raw_dec():
        for i, chunk in enumerate(sealed):
            raw.decrypt(prefix + i.to_bytes(4, "big") + b"\0", chunk, header)

    def kms_enc():
        stream.encrypt_file(key, io.BytesIO(data), NullSink(), b"ad", segment_size=segment)

    def kms_dec():
        stream.decrypt_file(key, io.BytesIO(ciphertext), NullSink(), b"ad")

    size_mb = len(data) / 1e6
    r = {name: size_mb / med for name, (med, _) in zip(("raw_enc", "kms_enc", "raw_dec", "kms_dec"),
                                                        interleaved(raw_enc, kms_enc, raw_dec, kms_dec), strict=True)}
    print(f"    streaming {megabytes} MB, segment {segment // 1024} KiB (MB/s medians): encrypt raw SM4-GCM "
          f"{r['raw_enc']:5.0f} | encrypt_file {r['kms_enc']:5.0f} (kms/raw {r['kms_enc'] / r['raw_enc']:.2f});"
          f" decrypt raw {r['raw_dec']:5.0f} | decrypt_file {r['kms_dec']:5.0f}"
          f" (kms/raw {r['kms_dec'] / r['raw_dec']:.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 MB stream, fewer field pairs")
    parser.add_argument("--mb", type=int, help="stream size in MB (default 200, --quick 20)")
    args = parser.parse_args()
    megabytes = args.mb or (20 if args.quick else 200)
    print(f"python {sys.version.split()[0]}, cpus {os.cpu_count()}, load {os.getloadavg()[0]:.2f}, "
          f"DEFAULT_SEGMENT_SIZE {stream.DEFAULT_SEGMENT_SIZE // 1024} KiB")
    bench_fields(20_000 if args.quick else 100_000)
    bench_stream(megabytes, stream.DEFAULT_SEGMENT_SIZE, verbose=True)
    sweep_mb = min(megabytes, 64)
    print(f"    segment-size sweep ({sweep_mb} MB, MB/s medians):")
    print("      segment   raw enc / raw dec | encrypt_file / decrypt_file | update(64 KiB) / iter_decrypt")
    for segment in (64 * 1024, 128 * 1024, 256 * 1024, 512 * 1024, 1024 * 1024):
        r = bench_stream(sweep_mb, segment, verbose=False)
        print(f"      {segment // 1024:5d} KiB  {r['raw_enc']:7.0f} / {r['raw_dec']:7.0f} | {r['kms_enc']:7.0f} /"
              f" {r['kms_dec']:7.0f}           | {r['push_enc']:7.0f} / {r['pull_dec']:7.0f}")
    bench_sm(5_000 if args.quick else 20_000, min(megabytes, 64), stream.DEFAULT_SEGMENT_SIZE)
    print(f"load after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
