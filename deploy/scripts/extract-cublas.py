#!/usr/bin/env python3
"""Used by deploy/Containerfile: copies libcublas.so.12 and libcublasLt.so.12 out of the
nvidia-cublas-cu12 wheel in the current directory into the directory given (default /out)."""

import glob
import os
import sys
import zipfile

WANT = ("libcublas.so.12", "libcublasLt.so.12")
out = sys.argv[1] if len(sys.argv) > 1 else "/out"
os.makedirs(out, exist_ok=True)
(wheel,) = glob.glob("*.whl")
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        base = os.path.basename(name)
        if base in WANT:
            with open(os.path.join(out, base), "wb") as f:
                f.write(z.read(name))
missing = [w for w in WANT if not os.path.exists(os.path.join(out, w))]
if missing:
    sys.exit(f"{wheel}: missing {missing}")
print(f"extracted {', '.join(WANT)} from {wheel}")
