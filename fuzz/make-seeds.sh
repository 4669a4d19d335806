#!/usr/bin/env bash
# Seeds for the used-block map fuzzers: small images made by the real mkfs
# tools, written into each target's corpus (not in git) once. Random bytes
# almost never hold a superblock; these start the fuzzer inside the formats.
set -uo pipefail
cd "$(dirname "$0")"
mk() {
  local t=$1 name=$2 size=$3; shift 3
  local f=corpus/$t/seed-$name
  mkdir -p "corpus/$t"
  [ -e "$f" ] && return 0
  truncate -s "$size" "$f.tmp" && "$@" "$f.tmp" >/dev/null 2>&1 && mv "$f.tmp" "$f" || { rm -f "$f.tmp"; echo "seed $t/$name: $1 failed"; }
}
mk usedmap_ext ext4-1k 512K mkfs.ext4 -q -F -b 1024
mk usedmap_ext ext4-flex 2M mkfs.ext4 -q -F -b 1024 -O flex_bg,metadata_csum,64bit -G 4
mk usedmap_ext ext2 256K mkfs.ext2 -q -F -b 1024
mk usedmap_ext ext4-bigalloc 4M mkfs.ext4 -q -F -b 1024 -O bigalloc -C 4096
mk usedmap_fat fat12 512K mkfs.vfat -F 12
mk usedmap_fat fat16 4M mkfs.vfat -F 16 -s 1
mk usedmap_exfat exfat 4M mkfs.exfat
mk usedmap_ntfs ntfs 2M mkntfs -Q -F
mk usedmap_swap swap 64K mkswap
mk usedmap_swap swap-8k 128K mkswap -p 8192
exit 0
