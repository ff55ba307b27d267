"""The instruction mix of a CUDA kernel's main loop, without a GPU.

Compiles one CUDA C++ file (as `tools/cuda-check.sh --out DIR` writes them) to sm_90a machine
code with NVRTC, disassembles it with cuobjdump, takes the longest backward branch as the main
loop, and counts its instructions by opcode (per plane, per trip).

    python3 tools/sass_loop.py LIBNVRTC CUDA_INCLUDE CUOBJDUMP FILE.cu [FILE.cu ...]

`tools/sass-loop.sh FILE.cu ...` fetches the tools and runs it.
"""
import collections
import ctypes
import re
import subprocess
import sys
import tempfile


def cubin(nvrtc, include, source):
    prog = ctypes.c_void_p()
    if nvrtc.nvrtcCreateProgram(ctypes.byref(prog), source, b"kernel.cu", 0, None, None) != 0:
        raise SystemExit("nvrtcCreateProgram failed")
    # As cubecl's CUDA runtime: CUDA 13's `include/cccl` too (the `cp.async` barriers' headers).
    opts = [b"--gpu-architecture=sm_90a", ("--include-path=" + include).encode(), ("--include-path=" + include + "/cccl").encode()]
    if nvrtc.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts)) != 0:
        size = ctypes.c_size_t()
        nvrtc.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        nvrtc.nvrtcGetProgramLog(prog, log)
        raise SystemExit("NVRTC: " + log.value.decode(errors="replace")[-2000:])
    size = ctypes.c_size_t()
    nvrtc.nvrtcGetCUBINSize(prog, ctypes.byref(size))
    out = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetCUBIN(prog, out)
    return out.raw


def loop_mix(sass):
    ins = []
    for line in sass.splitlines():
        m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?);", line)
        if m:
            ins.append((int(m.group(1), 16), m.group(2).strip()))
    loop = None
    for addr, text in ins:
        target = re.search(r"BRA.*?0x([0-9a-f]+)", text)
        if target:
            start = int(target.group(1), 16)
            if start < addr and (loop is None or addr - start > loop[1] - loop[0]):
                loop = (start, addr)
    if loop is None:
        return None, collections.Counter()
    mix = collections.Counter()
    for addr, text in ins:
        if loop[0] <= addr <= loop[1]:
            words = text.split()
            op = words[1] if words[0].startswith("@") else words[0]
            mix[op.split(".")[0]] += 1
    return loop, mix


def main():
    if len(sys.argv) < 5:
        raise SystemExit(__doc__)
    nvrtc = ctypes.CDLL(sys.argv[1])
    include, cuobjdump = sys.argv[2], sys.argv[3]
    for path in sys.argv[4:]:
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(cubin(nvrtc, include, open(path, "rb").read()))
            f.flush()
            sass = subprocess.run([cuobjdump, "-sass", f.name], capture_output=True, text=True, check=True).stdout
        loop, mix = loop_mix(sass)
        if loop is None:
            print(f"{path}: no loop")
            continue
        top = ", ".join(f"{op} {n}" for op, n in mix.most_common(8))
        print(f"{path}: {sum(mix.values())} instructions per trip ({top})")


if __name__ == "__main__":
    main()
