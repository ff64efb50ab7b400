#!/usr/bin/python3
"""How bright each labelled region is on each modality, per BraTS 2018-2021 case.

    /usr/bin/python3 scripts/label_contrast.py [CASES_DIR]   (default ../shared/data/brats2018)

For every case folder (<case>_{t1ce,t1,flair,t2,seg}.nii.gz) and modality: the mean intensity
of the necrotic core (label 1), edema (2) and enhancing tumour (4) as a z-score against the
brain outside the tumour (nonzero voxels labelled 0). Enhancing tumour is by definition bright
on T1ce; a case whose label 4 is not clearly brighter than the normal brain there (z < 0.5)
is flagged: no model that reads the images can find that label (docs/accuracy.md, fold 3's
ET). A case without label 4 says so and is not flagged.

Reads NIfTI-1 itself (gzip, vox_offset, datatype, scl_slope of 0 meaning no scaling) with
numpy only, so Debian's python3-numpy is all it needs.
"""
import gzip
import os
import struct
import sys

import numpy as np

# Enhancing tumour's T1ce mean at least this many standard deviations of the normal brain above
# its mean: the real enhancing labels sit at 1.7-2.9, necrosis at -1.8 to +0.2.
BRIGHT = 0.5

DTYPES = {2: np.uint8, 4: np.int16, 8: np.int32, 16: np.float32, 64: np.float64, 256: np.int8, 512: np.uint16}


def read_nifti(path):
    raw = gzip.open(path).read() if path.endswith(".gz") else open(path, "rb").read()
    if struct.unpack("<i", raw[0:4])[0] != 348:
        raise ValueError(f"{path}: not a little-endian NIfTI-1 file (sizeof_hdr is not 348)")
    dims = struct.unpack("<8h", raw[40:56])
    datatype = struct.unpack("<h", raw[70:72])[0]
    vox_offset = int(struct.unpack("<f", raw[108:112])[0])
    slope, intercept = struct.unpack("<2f", raw[112:120])
    if datatype not in DTYPES:
        raise ValueError(f"{path}: datatype {datatype} not read here")
    count = int(np.prod(dims[1:1 + dims[0]]))
    values = np.frombuffer(raw, dtype=DTYPES[datatype], count=count, offset=vox_offset).astype(np.float64)
    return values * slope + intercept if slope != 0 else values


def main():
    cases_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "brats2018")
    modalities = ["t1ce", "t1", "flair", "t2"]
    labels = {1: "core", 2: "edema", 4: "enhancing"}
    print("case," + ",".join(f"{m}_{labels[l]}_z" for m in modalities for l in labels) + ",voxels_core,voxels_edema,voxels_enhancing,flag")
    flagged = 0
    for case in sorted(os.listdir(cases_dir)):
        folder = os.path.join(cases_dir, case)
        if not os.path.isdir(folder):
            continue
        seg = read_nifti(os.path.join(folder, f"{case}_seg.nii.gz"))
        row, t1ce_enhancing = [case], float("nan")
        for m in modalities:
            image = read_nifti(os.path.join(folder, f"{case}_{m}.nii.gz"))
            normal = image[(image > 0) & (seg == 0)]
            mean, std = normal.mean(), normal.std()
            for label in labels:
                region = seg == label
                z = (image[region].mean() - mean) / std if region.any() else float("nan")
                row.append(f"{z:.2f}")
                if m == "t1ce" and label == 4:
                    t1ce_enhancing = z
        row += [str(int((seg == label).sum())) for label in labels]
        has_enhancing = bool((seg == 4).any())
        flag = has_enhancing and not t1ce_enhancing >= BRIGHT
        flagged += flag
        row.append("enhancing label not bright on T1ce" if flag else "" if has_enhancing else "no enhancing label")
        print(",".join(row))
    print(f"# {flagged} case(s) whose enhancing label is less than {BRIGHT} standard deviations brighter on T1ce than the "
          "normal brain", file=sys.stderr)


if __name__ == "__main__":
    main()
