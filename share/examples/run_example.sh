#!/usr/bin/env bash
# Run pattersolve on the bundled example and compare with the known answer.
# Usage (after installing): bash share/examples/run_example.sh [OUTDIR]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="${PATTERSOLVE_BIN:-$(cd "$here/../.." && pwd)/.venv/bin}"
out="${1:-example-output}"
mkdir -p "$out"
# --overwrite on purpose: re-running the example replaces its own previous outputs.
"$bin/pattersolve" "$here/alaala_1akz.mtz" -o "$out/alaala_1akz.map" \
    --json "$out/alaala_1akz.json" --overwrite
"$bin/pattersolve-phasematch" "$here/alaala_1akz_truth.mtz" "$out/alaala_1akz.mtz" \
    --json "$out/phasematch.json" --plot "$out/phasematch.png" --overwrite
echo
echo "map:         $out/alaala_1akz.map"
echo "phased MTZ:  $out/alaala_1akz.mtz   (FWT/PHWT, PHIB/FOM, HLA-HLD)"
echo "summary:     $out/alaala_1akz.json"
"$bin/python" - "$out/phasematch.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
r, floor = m["result"], m["random_phase_floor"]
print(f"vs the known answer: weighted phase error {r['weighted_error']:.1f} deg "
      f"(unweighted {r['unweighted_error']:.1f}), map CC {r['map_cc']:.3f}; "
      f"random phases: {floor['weighted_error']:.0f} deg, CC {floor['map_cc']:.2f}")
PY
