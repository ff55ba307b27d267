# Sourced by the device scripts. The kernel cache (`--kernel-cache .kcache`: cubecl's PTX and
# autotune results) costs a fresh machine minutes of NVRTC compilation and autotuning before
# the first training step (303 s for the real 0.5B, 362 s for the 7B shape). It survives
# between calls on a warm machine but not between sessions, so it travels: `kcache_pack`
# (last call of a session) returns it xz-compressed in 15 MiB pieces (what one returned file
# may be), to be saved here under .kcache-carry/ (git-ignored); `kcache_restore` (start of a
# call that carries .kcache-carry) unpacks it when the machine has none. Valid for the same
# GPU model and the same binary's kernels; cubecl recompiles whatever it does not find.
kcache_restore() {
  if [ ! -d .kcache ] && ls .kcache-carry/kcache.tar.xz.* > /dev/null 2>&1; then
    cat .kcache-carry/kcache.tar.xz.* | xz -dc | tar xf - && echo "kernel cache restored: $(du -sh .kcache | cut -f1)"
  fi
}
kcache_pack() {  # [MAX_PIECES]: returns nothing if the cache needs more pieces
  local max=${1:-3}
  [ -d .kcache ] || return 0
  rm -f /tmp/kc.xz.*; tar cf - .kcache | xz -T0 -6 | split -b 15M -d - /tmp/kc.xz.
  local n; n=$(ls /tmp/kc.xz.* | wc -l)
  if [ "$n" -le "$max" ]; then
    for f in /tmp/kc.xz.*; do cp "$f" "$OUT/kcache.tar.xz.${f##*.}"; done
    echo "kernel cache: $(du -sh .kcache | cut -f1) -> $n piece(s) in \$OUT; keep them here in .kcache-carry/"
  else
    echo "kernel cache: $n pieces of 15 MiB, more than $max: not returned"
  fi
}
