#!/usr/bin/env bash
# Plots a soak report (benches/soak.sh, qrlink-load --soak --json) as a PNG: the gateway's RSS,
# its open fds and alive tasks, and its sessions (active, detached) over time, with the two
# windows of the verdict shaded and the end of the load marked.
#
#   benches/soak-plot.sh benches/soak.json benches/soak.png
#
# Needs jq and gnuplot (`apt-get install -y gnuplot-nox`).
set -euo pipefail
json=${1:-benches/soak.json}
png=${2:-benches/soak.png}
data=$(mktemp)
trap 'rm -f "$data"' EXIT

# minutes, RSS MiB, fds, tasks, sessions active, detached (a reading without metrics: "?").
jq -r '.soak.points[] | [(.t_s / 60), ((.rss_kib // 0) / 1024), (.fds // "?"), (.tasks // "?"),
  (.sessions_active // "?"), (.sessions_detached // 0)] | @tsv' "$json" >"$data"
read -r f0 f1 l0 l1 load title < <(jq -r '.soak | [(.first.from_s / 60), (.first.to_s / 60),
  (.last.from_s / 60), (.last.to_s / 60), (.load_s / 60)] | @tsv' "$json" | tr '\n' ' ';
  jq -r '"\(.rate.offered_per_s)/s, mix hang-up/resume/scan/timeout \(.soak.mix | [.hangup, .resume, .scan, .timeout] | map(tostring) | join("/")), \(.soak.faults_per_s) faults/s"' "$json")

gnuplot <<EOF
set terminal pngcairo size 1100,900 font "sans,10"
set output "$png"
set datafile missing "?"
set datafile separator "\t"
set multiplot layout 3,1 title "qrlink soak: $title\nshaded: the verdict's windows (first, last); dashed: end of the load, then the drain through the 120 s grace"
set grid
set key top left
set xrange [0:*]
set object 1 rect from $f0, graph 0 to $f1, graph 1 fc rgb "#dde8f7" fs solid 0.6 noborder behind
set object 2 rect from $l0, graph 0 to $l1, graph 1 fc rgb "#dde8f7" fs solid 0.6 noborder behind
set arrow 1 from $load, graph 0 to $load, graph 1 nohead dt 2 lc rgb "gray40"
set ylabel "MiB"
set yrange [0:*]
plot "$data" using 1:2 with lines lw 2 lc rgb "#1f77b4" title "gateway RSS"
set ylabel "count"
plot "$data" using 1:3 with lines lw 2 lc rgb "#d62728" title "open fds", \
     "$data" using 1:4 with lines lw 2 lc rgb "#2ca02c" title "alive tasks"
set xlabel "minutes since the first session"
set ylabel "sessions"
plot "$data" using 1:5 with lines lw 2 lc rgb "#9467bd" title "active (attached + detached)", \
     "$data" using 1:6 with lines lw 2 lc rgb "#ff7f0e" title "detached"
unset multiplot
EOF
echo "wrote $png"
