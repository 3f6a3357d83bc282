"""Writes fid_inception_keys.json: the key -> shape table of the standard FID Inception weights file
(pytorch-fid's pt_inception-2015-12-05-6726825d.pth), derived from the *published architecture* as read in
torchvision's torchvision/models/inception.py (Inception3 with num_classes=1008, aux_logits=False, which is what
pytorch-fid's fid_inception_v3 builds before loading the file) - deliberately not from mclcore's module, so the
test comparing the two can fail.

Each entry below is (name, in_channels, out_channels, kernel_h, kernel_w) of one BasicConv2d (conv without bias +
BatchNorm2d), exactly as the torchvision constructors list them.

    python tests/metrics/data/make_fid_inception_keys.py      # rewrites the JSON next to this file
"""
import json
import os


def block_a(p, cin, pool):
    return [(f"{p}.branch1x1", cin, 64, 1, 1), (f"{p}.branch5x5_1", cin, 48, 1, 1), (f"{p}.branch5x5_2", 48, 64, 5, 5),
            (f"{p}.branch3x3dbl_1", cin, 64, 1, 1), (f"{p}.branch3x3dbl_2", 64, 96, 3, 3),
            (f"{p}.branch3x3dbl_3", 96, 96, 3, 3), (f"{p}.branch_pool", cin, pool, 1, 1)]


def block_b(p, cin):
    return [(f"{p}.branch3x3", cin, 384, 3, 3), (f"{p}.branch3x3dbl_1", cin, 64, 1, 1),
            (f"{p}.branch3x3dbl_2", 64, 96, 3, 3), (f"{p}.branch3x3dbl_3", 96, 96, 3, 3)]


def block_c(p, cin, c7):
    return [(f"{p}.branch1x1", cin, 192, 1, 1), (f"{p}.branch7x7_1", cin, c7, 1, 1), (f"{p}.branch7x7_2", c7, c7, 1, 7),
            (f"{p}.branch7x7_3", c7, 192, 7, 1), (f"{p}.branch7x7dbl_1", cin, c7, 1, 1),
            (f"{p}.branch7x7dbl_2", c7, c7, 7, 1), (f"{p}.branch7x7dbl_3", c7, c7, 1, 7),
            (f"{p}.branch7x7dbl_4", c7, c7, 7, 1), (f"{p}.branch7x7dbl_5", c7, 192, 1, 7),
            (f"{p}.branch_pool", cin, 192, 1, 1)]


def block_d(p, cin):
    return [(f"{p}.branch3x3_1", cin, 192, 1, 1), (f"{p}.branch3x3_2", 192, 320, 3, 3),
            (f"{p}.branch7x7x3_1", cin, 192, 1, 1), (f"{p}.branch7x7x3_2", 192, 192, 1, 7),
            (f"{p}.branch7x7x3_3", 192, 192, 7, 1), (f"{p}.branch7x7x3_4", 192, 192, 3, 3)]


def block_e(p, cin):
    return [(f"{p}.branch1x1", cin, 320, 1, 1), (f"{p}.branch3x3_1", cin, 384, 1, 1),
            (f"{p}.branch3x3_2a", 384, 384, 1, 3), (f"{p}.branch3x3_2b", 384, 384, 3, 1),
            (f"{p}.branch3x3dbl_1", cin, 448, 1, 1), (f"{p}.branch3x3dbl_2", 448, 384, 3, 3),
            (f"{p}.branch3x3dbl_3a", 384, 384, 1, 3), (f"{p}.branch3x3dbl_3b", 384, 384, 3, 1),
            (f"{p}.branch_pool", cin, 192, 1, 1)]


CONVS = [("Conv2d_1a_3x3", 3, 32, 3, 3), ("Conv2d_2a_3x3", 32, 32, 3, 3), ("Conv2d_2b_3x3", 32, 64, 3, 3),
         ("Conv2d_3b_1x1", 64, 80, 1, 1), ("Conv2d_4a_3x3", 80, 192, 3, 3),
         *block_a("Mixed_5b", 192, 32), *block_a("Mixed_5c", 256, 64), *block_a("Mixed_5d", 288, 64),
         *block_b("Mixed_6a", 288),
         *block_c("Mixed_6b", 768, 128), *block_c("Mixed_6c", 768, 160), *block_c("Mixed_6d", 768, 160),
         *block_c("Mixed_6e", 768, 192), *block_d("Mixed_7a", 768), *block_e("Mixed_7b", 1280),
         *block_e("Mixed_7c", 2048)]


def table():
    """{"params": {key: shape}, "buffers": {key: shape}} in the file's order (module registration order)."""
    params, buffers = {}, {}
    for name, cin, cout, kh, kw in CONVS:
        params[f"{name}.conv.weight"] = [cout, cin, kh, kw]
        params[f"{name}.bn.weight"] = [cout]
        params[f"{name}.bn.bias"] = [cout]
        buffers[f"{name}.bn.running_mean"] = [cout]
        buffers[f"{name}.bn.running_var"] = [cout]
    params["fc.weight"] = [1008, 2048]
    params["fc.bias"] = [1008]
    return {"params": params, "buffers": buffers}


if __name__ == "__main__":
    t = table()
    n = sum(eval("*".join(map(str, s))) for s in t["params"].values())
    t["n_parameters"] = n
    t["n_batchnorms"] = len(CONVS)
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "fid_inception_keys.json"), "w") as f:
        # one key per line: a reviewable diff when the table changes
        f.write("{\n" + ",\n".join(
            f'"{sec}": {{\n' + ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in t[sec].items()) + "\n}"
            for sec in ("params", "buffers")) + f',\n"n_parameters": {n},\n"n_batchnorms": {len(CONVS)}\n}}\n')
    print(len(t["params"]), "parameters,", len(t["buffers"]), "buffers,", n, "parameter values,", len(CONVS), "BN")
