"""Fragment extraction and shard writing (pattersolve_train.prepare / .shards)."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_path, train_atom_lines, train_ids, train_write_entries
from pattersolve_train.prepare import PrepareOptions, extract_fragments, prepare, read_structure
from pattersolve_train.shards import iter_fragments, load_split, read_manifest

from pattersolve.errors import PattersolveError


def _messy_pdb() -> str:
    """The six residues with THR 5 turned into GLY, chain B broken, plus H, water, ligand,
    an alternate conformation and a second model."""
    lines = []
    for line in train_atom_lines():
        if line[22:26].strip() == "5":
            if line[12:16].strip() in ("CB", "OG1", "CG2"):
                continue
            line = line[:17] + "GLY" + line[20:]
        lines.append(line)
    # alternate conformation B of ILE 2 CB, shifted 3 A: must be dropped
    alt = next(s for s in lines if s[12:16] == " CB " and s[17:20] == "ILE")
    lines = [s[:16] + "A" + s[17:] if s is alt else s for s in lines]
    lines.append(alt[:16] + "B" + alt[17:30] + f"{float(alt[30:38]) + 3:8.3f}" + alt[38:])
    lines.append("ATOM     99  H   ILE A   2      44.000  16.000 -14.000  1.00 13.00"
                 "           H")
    lines.append("HETATM  100  O   HOH A 201      30.000  10.000 -10.000  1.00 20.00"
                 "           O")
    lines.append("HETATM  101  S   SO4 A 202      31.000  11.000 -11.000  1.00 20.00"
                 "           S")
    # chain B: residues 1-4 with residue 3 onwards moved 5 A away (no peptide bond 2-3)
    for line in train_atom_lines():
        if int(line[22:26]) <= 4:
            shift = 5.0 if int(line[22:26]) >= 3 else 0.0
            x = float(line[30:38]) + shift
            lines.append(line[:21] + "B" + line[22:30] + f"{x:8.3f}" + line[38:])
    text = "MODEL        1\n" + "\n".join(lines) + "\nENDMDL\n"
    text += "MODEL        2\n" + "\n".join(train_atom_lines()) + "\nENDMDL\nEND\n"
    return text


def test_extraction_counts_all_residues() -> None:
    st = read_structure("9zzz.pdb", _messy_pdb().encode())
    frags = extract_fragments(st, "9zzz", PrepareOptions())
    # chain A: 1-2 2-3 3-4 4-5 5-6 (GLY complete); chain B: 1-2 and 3-4 (2-3 broken)
    assert [f.source for f in frags] == ["9zzz/A/1-2", "9zzz/A/2-3", "9zzz/A/3-4", "9zzz/A/4-5",
                                         "9zzz/A/5-6", "9zzz/B/1-2", "9zzz/B/3-4"]
    pro_ile = frags[0]
    assert len(pro_ile.elements) == 7 + 8  # no H, no altloc B, no OXT
    assert "H" not in pro_ile.elements
    cb = pro_ile.xyz[7 + 4]  # ILE CB: conformation A kept
    assert cb == pytest.approx([42.273, 16.420, -15.162], abs=1e-3)


def test_extraction_length_three_and_cap() -> None:
    st = read_structure("9zzz.pdb", _messy_pdb().encode())
    frags = extract_fragments(st, "9zzz", PrepareOptions(length=3))
    assert [f.source for f in frags] == ["9zzz/A/1-3", "9zzz/A/2-4", "9zzz/A/3-5", "9zzz/A/4-6"]
    st = read_structure("9zzz.pdb", _messy_pdb().encode())
    capped = extract_fragments(st, "9zzz", PrepareOptions(max_per_entry=3))
    assert len(capped) == 3
    st = read_structure("9zzz.pdb", _messy_pdb().encode())
    again = extract_fragments(st, "9zzz", PrepareOptions(max_per_entry=3))
    assert [f.source for f in again] == [f.source for f in capped]  # deterministic


def test_dialanine_truncation_skips_glycine() -> None:
    st = read_structure("9zzz.pdb", _messy_pdb().encode())
    frags = extract_fragments(st, "9zzz", PrepareOptions(dialanine=True))
    # GLY 5 has no CB: pairs 4-5 and 5-6 are skipped
    assert [f.source for f in frags] == ["9zzz/A/1-2", "9zzz/A/2-3", "9zzz/A/3-4",
                                         "9zzz/B/1-2", "9zzz/B/3-4"]
    for f in frags:
        assert f.elements == ["N", "C", "C", "O", "C"] * 2  # N CA C O CB twice
    # the CYS 3 SG is gone, its CB kept
    cys = frags[2]
    assert "S" not in cys.elements
    assert cys.xyz[4] == pytest.approx([42.710, 10.727, -15.865], abs=1e-3)


def test_shards_splits_and_resume(tmp_path: Path) -> None:
    ids = train_ids(12)
    src = tmp_path / "src"
    train_write_entries(src, ids)
    (src / "s_split_train.txt").write_text("\n".join(ids[:8]))
    (src / "s_split_val.txt").write_text("\n".join(ids[8:10]))
    (src / "s_split_test.txt").write_text("\n".join(ids[10:]))
    out = tmp_path / "shards"
    opts = PrepareOptions(dialanine=True, entries_per_shard=3)
    first = prepare(src, out, opts, progress=False)
    assert first.manifest_written and first.n_shards_written == 3 + 1 + 1
    manifest = read_manifest(out)
    assert manifest["format"] == "pattersolve-shards-1"
    counts = {s: sum(e["n_fragments"] for e in manifest["shards"] if e["split"] == s)
              for s in ("train", "val", "test")}
    assert counts == {"train": 8 * 5, "val": 2 * 5, "test": 2 * 5}
    train_entries = {f.entry for f in iter_fragments(out, "train")}
    test_entries = {f.entry for f in iter_fragments(out, "test")}
    assert train_entries == set(ids[:8]) and test_entries == set(ids[10:])
    with np.load(out / "train" / "shard-00000.npz", allow_pickle=False) as z:
        assert z["coords"].dtype == np.float32 and z["element"].dtype == np.uint8
        assert z["offsets"].dtype == np.int64 and z["source"].dtype.kind == "U"
        assert z["offsets"][-1] == len(z["coords"]) == len(z["b_iso"])

    # resumable: delete one shard and the manifest; only that shard is rewritten
    (out / "train" / "shard-00001.npz").unlink()
    (out / "manifest.json").unlink()
    again = prepare(src, out, opts, progress=False)
    assert again.n_shards_written == 1 and again.n_shards_skipped == 4
    assert json.loads((out / "manifest.json").read_text())["sha256"] == manifest["sha256"]

    # array jobs: 0/2 and 1/2 together give the same directory
    out2 = tmp_path / "shards2"
    part = prepare(src, out2, opts, shard=(0, 2), progress=False)
    assert not part.manifest_written
    rest = prepare(src, out2, opts, shard=(1, 2), progress=False)
    assert rest.manifest_written
    assert read_manifest(out2)["sha256"] == manifest["sha256"]


def test_checksum_mismatch_is_refused(tmp_path: Path, train_shards: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(train_shards, copy)
    shard = copy / "train" / "shard-00000.npz"
    frags = load_split(copy, "train", limit=2)
    assert len(frags) == 2
    from pattersolve_train.shards import write_shard

    write_shard(shard, frags)  # valid npz, different content
    with pytest.raises(PattersolveError, match="SHA-256"):
        load_split(copy, "train")


def test_hash_split_tarball_and_gz(tmp_path: Path) -> None:
    import gzip

    ids = train_ids(10, prefix="8")
    src = tmp_path / "src"
    train_write_entries(src, ids)
    for p in list(src.glob("*.pdb"))[:3]:  # some gzipped, named like the wwPDB archive
        (src / f"pdb{p.stem}.ent.gz").write_bytes(gzip.compress(p.read_bytes()))
        p.unlink()
    tar = tmp_path / "src.tar.gz"
    with tarfile.open(tar, "w:gz") as t:
        t.add(src, arcname="PDB")
    out = tmp_path / "out"
    report = prepare(tar, out, PrepareOptions(), progress=False)
    assert report.manifest_written and not report.errors
    manifest = read_manifest(out)
    assert manifest["config"]["split_method"] == "hash-90-5-5"
    entries = {f.entry for s in ("train", "val", "test") for f in iter_fragments(out, s)}
    assert entries == set(ids)


@pytest.mark.shared
def test_one_entry_of_the_shared_tarball(tmp_path: Path) -> None:
    tarball = shared_path("data", "pdb", "pdownb_PDB.tar.xz")
    index = shared_path("data", "pdb", "pdownb_index.tsv")
    with tarfile.open(tarball) as t:  # the first member only (no full decompression)
        member = next(m for m in t if m.isfile())
        data = t.extractfile(member).read()
    ident = Path(member.name).stem
    row = next(line.split("\t") for line in index.read_text().splitlines()
               if line.startswith(ident + "\t"))
    header = index.read_text().splitlines()[0].split("\t")
    expected = int(row[header.index("n_adjacent_pairs_both_complete")])
    frags = extract_fragments(read_structure(member.name, data), ident, PrepareOptions())
    assert len(frags) == expected
