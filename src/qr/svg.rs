//! The SVG writer behind [`QrMatrix::to_svg`]: the dark modules as one stroked path of
//! horizontal and vertical lines, about 4.5 KiB for a 225-character WhatsApp payload.
//!
//! # Geometry
//!
//! The path is stroked, not filled (`fill="none"`), with a stroke one module wide, the default
//! butt caps and miter joins. A line along the centre of a row of modules, from the left edge of
//! its first module to the right edge of its last, paints exactly those modules; a polyline that
//! turns through module centres paints every module it passes, the miter filling the outer
//! corner of each 90° turn. Every edge of the painted area therefore lies on a module edge, so
//! nothing is painted half-way: at a whole number of device pixels per module (what the link
//! page snaps to) every pixel is fully dark or fully light, with no seam between lines that
//! touch, since the renderer fills the stroke of the whole path at once. Polylines never turn
//! back on themselves (a 180° join is not mitered) and always start and end on a module edge.
//!
//! Module centres and edges are half a module apart, so the path is written in half modules under
//! `transform="scale(.5)"` with `stroke-width="2"`: every coordinate is then an integer and the
//! `viewBox` still counts modules, as the page expects.
//!
//! # Making it short
//!
//! Each polyline costs its `m` move (about 4 bytes: relative, no separator before a minus sign)
//! plus about 2.5 bytes per straight side, so the writer looks for few sides in few polylines:
//!
//! 1. *Few lines.* Every dark module lies in one maximal horizontal run and one maximal vertical
//!    run; drawing a set of runs that includes, for every dark module, one of its two runs paints
//!    all of them (lines may overlap). The fewest runs that do so form a minimum vertex cover of
//!    the bipartite graph whose vertices are the runs and whose edges are the modules, which
//!    König's theorem gives from a maximum matching (found here by augmenting paths). For a
//!    225-character payload that is about 760 lines where drawing rows alone takes about 960.
//! 2. *Few polylines.* Two chosen runs join without a move where an end of one is an end of a
//!    perpendicular other (an L: the polyline turns there), or where the ends of two parallel runs
//!    face each other across dark modules only (the polyline crosses over through them: one more
//!    side, cheaper than a move). Joins are taken greedily, L first, then the shortest crossings,
//!    never closing a loop: about 300 joins, leaving about 470 polylines.
//! 3. *Short moves.* Polylines are written nearest-first, each time choosing, among the next
//!    [`WINDOW`] in reading order of their first end, the polyline and direction whose move is
//!    the shortest to write.
//!
//! The whole document is about 1.6 times smaller than a filled outline of each dark area (7.4 KB)
//! and eight times smaller than `qrcode`'s own SVG renderer (a square per module, 37 KB). The mask
//! is not chosen for size: the symbol stays the one ISO/IEC 18004 (and `qrcode`) would draw.

use super::line::Line;
use super::{QUIET_ZONE, QrMatrix};

/// No run, slot or polyline.
const NONE: u32 = u32::MAX;

/// The document start, up to the `viewBox` size.
const HEAD: &str = r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 "#;

/// A maximal straight run of dark modules.
#[derive(Clone, Copy, Debug)]
struct Run {
    horizontal: bool,
    /// The row of a horizontal run, the column of a vertical one.
    line: u16,
    /// The first and last modules along the run, inclusive.
    first: u16,
    last: u16,
}

impl Run {
    /// The module `along` the run, as an index into the row-major module array.
    fn cell(self, along: u16, width: usize) -> usize {
        if self.horizontal {
            usize::from(self.line) * width + usize::from(along)
        } else {
            usize::from(along) * width + usize::from(self.line)
        }
    }

    fn is_single(self) -> bool {
        self.first == self.last
    }
}

/// Writes the standalone SVG document for `matrix`.
pub(super) fn write(matrix: &QrMatrix) -> String {
    let size = (matrix.width + 2 * QUIET_ZONE) as i32;
    // About 1.2 bytes of path per module for masked data.
    let mut svg = Vec::with_capacity(256 + 6 * matrix.width * matrix.width / 5);
    svg.extend_from_slice(HEAD.as_bytes());
    svg.extend_from_slice(format!("{size} {size}").as_bytes());
    svg.extend_from_slice(br#"" shape-rendering="crispEdges" role="img">"#);
    svg.extend_from_slice(br##"<rect width="100%" height="100%" fill="#fff"/>"##);
    svg.extend_from_slice(
        br##"<path transform="scale(.5)" fill="none" stroke="#000" stroke-width="2" d=""##,
    );
    let runs = Graph::new(&pack(matrix.width, &matrix.modules)).cover();
    let links = link(matrix.width, &matrix.modules, &runs);
    Polylines::trace(&runs, &links).write(&mut svg);
    svg.extend_from_slice(br#""/></svg>"#);
    String::from_utf8(svg).expect("the SVG is ASCII")
}

/// One row of modules as bits, bit `i` set for a dark module `i` (177 at most).
type Bits = Line<3>;

/// Rows of more runs than this cannot be: a run and a light module take two modules at least.
const MAX_RUNS_PER_ROW: usize = 96;

/// The rows of `dark` (`width` modules each) as bits.
fn pack(width: usize, dark: &[bool]) -> Vec<Bits> {
    dark.chunks_exact(width)
        .map(|row| {
            let mut bits = Bits::default();
            // Eight modules at a time: the bytes of eight `bool`s, each 0 or 1, multiplied so
            // that byte `i`'s bit lands on bit `56 + i` (the partial products never overlap).
            let mut octets = row.chunks_exact(8);
            for (i, octet) in (&mut octets).enumerate() {
                let octet: [bool; 8] = octet.try_into().expect("eight modules");
                let bytes = u64::from_le_bytes(octet.map(u8::from));
                let byte = bytes.wrapping_mul(0x0102_0408_1020_4080) >> 56;
                bits.0[i / 8] |= byte << (8 * (i % 8));
            }
            let rest = octets.remainder();
            for (x, &is_dark) in (width - rest.len()..).zip(rest) {
                bits.put(x, is_dark);
            }
            bits
        })
        .collect()
}

/// The bipartite graph of the maximal horizontal runs of dark modules ("rows") and the maximal
/// vertical ones ("columns"), joined by the modules they share.
///
/// The rows, in reading order, take the dark modules in reading order one after another, so the
/// columns through the modules of row `r`, its neighbours, are one slice of a single array of
/// the column through each dark module: no per-module array of the whole symbol is needed.
struct Graph {
    rows: Vec<Run>,
    /// The neighbours of row `r` are `column_of[row_start[r]..row_start[r + 1]]`.
    row_start: Vec<u32>,
    /// In reading order of their last modules.
    columns: Vec<Run>,
    /// The column through each dark module, in reading order.
    column_of: Vec<u32>,
}

impl Graph {
    fn new(rows: &[Bits]) -> Self {
        let width = rows.len();
        let above = |y: usize| if y > 0 { rows[y - 1] } else { Bits::default() };
        let below = |y: usize| rows.get(y + 1).copied().unwrap_or_default();

        let mut row_runs = Vec::with_capacity(width * width / 4);
        let mut row_start = Vec::with_capacity(width * width / 4 + 1);
        row_start.push(0);
        let mut dark = 0;
        for (y, &bits) in rows.iter().enumerate() {
            // A run starts at a dark module after a light one, and ends at one before a light one:
            // bit x of `left` is module x − 1, of `right` module x + 1.
            let (left, right) = (bits.shl(1), bits.shr(1));
            let mut starts = [0; MAX_RUNS_PER_ROW];
            let mut count = 0;
            (bits & !left).for_each_set(|x| {
                starts[count] = x as u16;
                count += 1;
            });
            let mut next = 0;
            (bits & !right).for_each_set(|last| {
                let first = starts[next];
                next += 1;
                row_runs.push(Run {
                    horizontal: true,
                    line: y as u16,
                    first,
                    last: last as u16,
                });
                dark += last as u32 + 1 - u32::from(first);
                row_start.push(dark);
            });
        }

        // Columns are numbered in reading order of their last modules, so the rows are walked
        // bottom up, where the number of a column is known at its last module: from the count
        // of columns ending in the rows above.
        let mut first_ending = Vec::with_capacity(width);
        let mut count = 0;
        for (y, &bits) in rows.iter().enumerate() {
            first_ending.push(count);
            count += (bits & !below(y)).count();
        }
        let mut columns = vec![
            Run {
                horizontal: false,
                line: 0,
                first: 0,
                last: 0,
            };
            count as usize
        ];
        let mut column_of = vec![0; dark as usize];
        // The column going up through each module of the current row.
        let mut current = [0u32; 64 * 3];
        let mut end = column_of.len();
        for y in (0..width).rev() {
            let bits = rows[y];
            let mut column = first_ending[y];
            (bits & !below(y)).for_each_set(|x| {
                current[x] = column;
                columns[column as usize] = Run {
                    horizontal: false,
                    line: x as u16,
                    first: 0,
                    last: y as u16,
                };
                column += 1;
            });
            let mut at = end - bits.count() as usize;
            end = at;
            bits.for_each_set(|x| {
                column_of[at] = current[x];
                at += 1;
            });
            (bits & !above(y)).for_each_set(|x| {
                columns[current[x] as usize].first = y as u16;
            });
        }
        Self {
            rows: row_runs,
            row_start,
            columns,
            column_of,
        }
    }

    /// The neighbours of row `row`.
    fn neighbours(&self, row: usize) -> &[u32] {
        &self.column_of[self.row_start[row] as usize..self.row_start[row + 1] as usize]
    }

    /// The fewest runs that include every dark module: a minimum vertex cover of the graph.
    fn cover(&self) -> Vec<Run> {
        let rows = &self.rows;
        let columns = &self.columns;
        // A maximum matching. Greedy first, single modules first (a vertex with one neighbour
        // can always be matched to it), then augmenting paths by depth-first search in phases
        // that share their visited marks: a column that led nowhere in a phase leads nowhere
        // again in it.
        let mut row_match = vec![NONE; rows.len()];
        let mut column_match = vec![NONE; columns.len()];
        for singles in [true, false] {
            for (row, &run) in rows.iter().enumerate() {
                if run.is_single() != singles || row_match[row] != NONE {
                    continue;
                }
                for &column in self.neighbours(row) {
                    if column_match[column as usize] == NONE {
                        row_match[row] = column;
                        column_match[column as usize] = row as u32;
                        break;
                    }
                }
            }
        }
        struct Frame {
            row: u32,
            /// The next neighbour to try and the end of the row's neighbours, in `column_of`.
            next: u32,
            end: u32,
            via: u32,
        }
        let frame = |row: u32| Frame {
            row,
            next: self.row_start[row as usize],
            end: self.row_start[row as usize + 1],
            via: NONE,
        };
        let mut visited = vec![0u32; columns.len()];
        let mut phase = 0;
        let mut stack: Vec<Frame> = Vec::new();
        loop {
            phase += 1;
            let mut augmented = false;
            for root in 0..rows.len() {
                if row_match[root] != NONE {
                    continue;
                }
                stack.clear();
                stack.push(frame(root as u32));
                while let Some(top) = stack.last_mut() {
                    if top.next == top.end {
                        stack.pop();
                        continue;
                    }
                    let column = self.column_of[top.next as usize];
                    top.next += 1;
                    if visited[column as usize] == phase {
                        continue;
                    }
                    visited[column as usize] = phase;
                    top.via = column;
                    let matched = column_match[column as usize];
                    if matched == NONE {
                        for frame in &stack {
                            row_match[frame.row as usize] = frame.via;
                            column_match[frame.via as usize] = frame.row;
                        }
                        augmented = true;
                        break;
                    }
                    stack.push(frame(matched));
                }
            }
            if !augmented {
                break;
            }
        }

        // König: the last phase, which found no augmenting path, visited exactly the columns
        // that alternating paths reach from unmatched rows (all of them matched, or a path would
        // have been found). The cover is those columns and the rows that such paths do not
        // reach: neither the unmatched rows nor the partners of those columns.
        let mut row_reached: Vec<bool> = row_match.iter().map(|&m| m == NONE).collect();
        for (&row, &mark) in column_match.iter().zip(&visited) {
            if mark == phase {
                row_reached[row as usize] = true;
            }
        }
        let mut chosen = Vec::with_capacity(rows.len());
        chosen.extend(
            rows.iter()
                .zip(&row_reached)
                .filter(|(_, reached)| !**reached)
                .map(|(run, _)| *run),
        );
        chosen.extend(
            columns
                .iter()
                .zip(&visited)
                .filter(|&(_, &mark)| mark == phase)
                .map(|(run, _)| *run),
        );
        chosen
    }
}

/// Longest crossing (in modules) considered for a join; longer ones are rare and barely help.
const MAX_CROSSING: usize = 8;

/// For each slot, the slot it is joined to (`NONE` for a polyline end).
///
/// Run `i` has slots `2i` and `2i + 1`: its first and last module. A single module has both at
/// the same place and is only joined across: slot `2i` from the left of a vertical run or above a
/// horizontal one, `2i + 1` from the other side, so a polyline crosses it straight.
fn link(width: usize, dark: &[bool], runs: &[Run]) -> Vec<u32> {
    // The slots of the horizontal and the vertical run ending at each module.
    let mut ends = vec![[NONE; 2]; width * width];
    for (i, run) in runs.iter().enumerate() {
        let direction = usize::from(!run.horizontal);
        ends[run.cell(run.first, width)][direction] = 2 * i as u32;
        if !run.is_single() {
            ends[run.cell(run.last, width)][direction] = 2 * i as u32 + 1;
        }
    }

    // Candidate joins (crossing length, slot, slot), an L having length 0. Each is found once:
    // an L from its horizontal run, a crossing from its run above or to the left.
    let mut candidates: Vec<(u8, u32, u32)> = Vec::with_capacity(2 * runs.len());
    for (i, &run) in runs.iter().enumerate() {
        let direction = usize::from(!run.horizontal);
        // Steps across the run, and the room below or to the right.
        let (step, room) = if run.horizontal {
            (width, width - 1 - usize::from(run.line))
        } else {
            (1, width - 1 - usize::from(run.line))
        };
        let room = room.min(MAX_CROSSING);
        for end in 0..2 {
            let slot = 2 * i as u32 + end;
            let cell = run.cell(if end == 0 { run.first } else { run.last }, width);
            if run.horizontal && !run.is_single() {
                let other = ends[cell][1];
                if other != NONE && !runs[other as usize / 2].is_single() {
                    candidates.push((0, slot, other));
                }
            }
            // Crossings over dark modules to a parallel run's end (for a single module, from
            // the slot on that side, and into the slot on the side facing this run).
            if run.is_single() && end == 0 {
                continue;
            }
            let mut at = cell;
            for crossing in 1..=room {
                at += step;
                if !dark[at] {
                    break;
                }
                let found = ends[at][direction];
                if found != NONE {
                    let single = runs[found as usize / 2].is_single();
                    candidates.push((crossing as u8, slot, found & !u32::from(single)));
                }
            }
        }
    }
    // Shortest first (a counting sort: few lengths, many candidates).
    let mut starts = [0usize; MAX_CROSSING + 2];
    for &(length, ..) in &candidates {
        starts[usize::from(length) + 1] += 1;
    }
    for length in 1..starts.len() {
        starts[length] += starts[length - 1];
    }
    let mut sorted = vec![(0, 0); candidates.len()];
    for &(length, a, b) in &candidates {
        sorted[starts[usize::from(length)]] = (a, b);
        starts[usize::from(length)] += 1;
    }

    let mut link = vec![NONE; 2 * runs.len()];
    // Union–find over runs, so that no join closes a loop.
    let mut parent: Vec<u32> = (0..runs.len() as u32).collect();
    let root = |parent: &mut [u32], mut run: u32| {
        while parent[run as usize] != run {
            parent[run as usize] = parent[parent[run as usize] as usize];
            run = parent[run as usize];
        }
        run
    };
    for (a, b) in sorted {
        if link[a as usize] != NONE || link[b as usize] != NONE {
            continue;
        }
        let (ra, rb) = (root(&mut parent, a / 2), root(&mut parent, b / 2));
        if ra != rb {
            parent[ra as usize] = rb;
            link[a as usize] = b;
            link[b as usize] = a;
        }
    }
    link
}

/// Polylines in half modules, quiet zone included: `points[spans[k].0..spans[k].1]` is the
/// `k`th, each point a turn except the two ends, which lie on module edges.
struct Polylines {
    points: Vec<(i32, i32)>,
    spans: Vec<(u32, u32)>,
}

impl Polylines {
    /// Follows each chain of joined runs from one of its free ends.
    fn trace(runs: &[Run], link: &[u32]) -> Self {
        let centre = |slot: u32| {
            let run = runs[slot as usize / 2];
            let along = i32::from(if slot % 2 == 0 { run.first } else { run.last });
            let (x, y) = if run.horizontal {
                (along, i32::from(run.line))
            } else {
                (i32::from(run.line), along)
            };
            let offset = 2 * QUIET_ZONE as i32 + 1;
            (2 * x + offset, 2 * y + offset)
        };
        let mut points: Vec<(i32, i32)> = Vec::with_capacity(4 * runs.len());
        let mut spans = Vec::with_capacity(runs.len());
        let mut done = vec![false; runs.len()];
        for (i, &run) in runs.iter().enumerate() {
            if done[i] {
                continue;
            }
            let start = if link[2 * i] == NONE {
                2 * i as u32
            } else if link[2 * i + 1] == NONE {
                2 * i as u32 + 1
            } else {
                // Inside a chain, drawn from one of its ends.
                continue;
            };
            let from = points.len();
            let mut slot = start;
            loop {
                done[slot as usize / 2] = true;
                push_turn(&mut points, from, centre(slot));
                push_turn(&mut points, from, centre(slot ^ 1));
                slot = link[(slot ^ 1) as usize];
                if slot == NONE {
                    break;
                }
            }
            let line = &mut points[from..];
            if let [(x, y)] = *line {
                // A single module on its own.
                let (dx, dy) = if run.horizontal { (1, 0) } else { (0, 1) };
                line[0] = (x - dx, y - dy);
                points.push((x + dx, y + dy));
            } else {
                // Out to the module edges, in the direction of travel.
                let k = line.len();
                let outward = |end: (i32, i32), next: (i32, i32)| {
                    (
                        end.0 + (end.0 - next.0).signum(),
                        end.1 + (end.1 - next.1).signum(),
                    )
                };
                line[0] = outward(line[0], line[1]);
                line[k - 1] = outward(line[k - 1], line[k - 2]);
                if k == 2 && line[1] < line[0] {
                    // A straight line reads shorter without a minus sign.
                    line.swap(0, 1);
                }
            }
            spans.push((from as u32, points.len() as u32));
        }
        debug_assert!(done.iter().all(|&d| d), "a chain closed on itself");
        Self { points, spans }
    }

    /// Appends the path data, polylines nearest-first: each time the one, among the next
    /// [`WINDOW`] in reading order of their first end, and the direction, whose move is shortest.
    fn write(&self, out: &mut Vec<u8>) {
        // Reading order of the polylines' first ends (by row, then column, then number).
        let first_ends: Vec<(u16, u16)> = self
            .spans
            .iter()
            .map(|&(from, to)| {
                let (first, last) = (self.points[from as usize], self.points[to as usize - 1]);
                let (x, y) = if (last.1, last.0) < (first.1, first.0) {
                    last
                } else {
                    first
                };
                (x as u16, y as u16)
            })
            .collect();
        let order = reading_order(&first_ends);

        let mut window = Window::default();
        let mut position = 0;
        let mut fill = |window: &mut Window, lane: usize| match order.get(position) {
            Some(&key) => {
                let (from, to) = self.spans[key as usize];
                let (first, last) = (self.points[from as usize], self.points[to as usize - 1]);
                window.set(lane, first, last, to - from == 2, key);
                position += 1;
            }
            None => window.clear(lane),
        };
        for lane in 0..WINDOW {
            fill(&mut window, lane);
        }
        // Written straight into the document's bytes, grown once by a bound on the path's length:
        // a move takes at most 9 bytes and a side 5 (coordinates have three digits at most).
        let start = out.len();
        out.resize(start + 9 * self.spans.len() + 5 * self.points.len(), 0);
        let mut path = Cursor {
            bytes: &mut out[start..],
            at: 0,
        };
        let mut pen = None;
        for _ in 0..order.len() {
            let (lane, reversed) = match pen {
                Some(pen) => window.nearest(pen),
                // The first polyline in reading order, from its first end.
                None => (
                    0,
                    (window.last_y[0], window.last_x[0]) < (window.first_y[0], window.first_x[0]),
                ),
            };
            let (from, to) = self.spans[window.polyline[lane] as usize];
            fill(&mut window, lane);
            let line = &self.points[from as usize..to as usize];
            pen = Some(if reversed {
                push_polyline(&mut path, pen, line.iter().rev().copied())
            } else {
                push_polyline(&mut path, pen, line.iter().copied())
            });
        }
        let len = path.at;
        out.truncate(start + len);
    }
}

/// The indices of `points` by row, then column, then index: a counting sort by column then a
/// stable one by row (coordinates are small, and a comparison sort took a tenth of the writing).
fn reading_order(points: &[(u16, u16)]) -> Vec<u32> {
    let buckets = 1 + points.iter().map(|&(x, y)| x.max(y)).max().unwrap_or(0) as usize;
    let mut counts = vec![0u32; buckets + 1];
    let mut by_column = vec![0u32; points.len()];
    let mut order = vec![0u32; points.len()];
    for &(x, _) in points {
        counts[usize::from(x) + 1] += 1;
    }
    for i in 1..=buckets {
        counts[i] += counts[i - 1];
    }
    for (k, &(x, _)) in points.iter().enumerate() {
        by_column[counts[usize::from(x)] as usize] = k as u32;
        counts[usize::from(x)] += 1;
    }
    counts.fill(0);
    for &(_, y) in points {
        counts[usize::from(y) + 1] += 1;
    }
    for i in 1..=buckets {
        counts[i] += counts[i - 1];
    }
    for &k in &by_column {
        let y = usize::from(points[k as usize].1);
        order[counts[y] as usize] = k;
        counts[y] += 1;
    }
    order
}

/// Polylines considered at each step of the nearest-first order: 16 gives nearly what a search of
/// all of them does (about 10 bytes more on the median payload) in a fraction of the time.
const WINDOW: usize = 16;

/// Coordinate of an empty lane of a [`Window`]: a move there takes at least 10 bytes, more than
/// any move within a symbol (at most 9: `m-370 370`), so it never wins.
const FAR: i16 = 1 << 14;

/// The polylines that may be written next, as arrays of their ends' data, one lane each, so that
/// [`Window::nearest`] compares all of them at once (coordinates are under 400 half modules).
struct Window {
    first_x: [i16; WINDOW],
    first_y: [i16; WINDOW],
    last_x: [i16; WINDOW],
    last_y: [i16; WINDOW],
    /// Bytes of an absolute move to each end.
    first_absolute: [i16; WINDOW],
    last_absolute: [i16; WINDOW],
    /// Bytes added by writing it backwards: a minus sign for a straight line.
    reversed_extra: [i16; WINDOW],
    /// The lanes' order by the reading order of their polylines, for ties: 0 for the first.
    rank: [i16; WINDOW],
    polyline: [u32; WINDOW],
}

impl Default for Window {
    fn default() -> Self {
        Self {
            first_x: [FAR; WINDOW],
            first_y: [FAR; WINDOW],
            last_x: [FAR; WINDOW],
            last_y: [FAR; WINDOW],
            first_absolute: [FAR; WINDOW],
            last_absolute: [FAR; WINDOW],
            reversed_extra: [0; WINDOW],
            rank: std::array::from_fn(|lane| lane as i16),
            polyline: [0; WINDOW],
        }
    }
}

impl Window {
    /// Puts the next polyline in reading order in `lane`, which becomes the last in rank.
    fn set(
        &mut self,
        lane: usize,
        first: (i32, i32),
        last: (i32, i32),
        straight: bool,
        polyline: u32,
    ) {
        self.demote(lane);
        (self.first_x[lane], self.first_y[lane]) = (first.0 as i16, first.1 as i16);
        (self.last_x[lane], self.last_y[lane]) = (last.0 as i16, last.1 as i16);
        self.first_absolute[lane] = absolute_move_len(first) as i16;
        self.last_absolute[lane] = absolute_move_len(last) as i16;
        self.reversed_extra[lane] = i16::from(straight);
        self.polyline[lane] = polyline;
    }

    /// Empties `lane`, for good.
    fn clear(&mut self, lane: usize) {
        self.demote(lane);
        (self.first_x[lane], self.first_y[lane]) = (FAR, FAR);
        (self.last_x[lane], self.last_y[lane]) = (FAR, FAR);
        (self.first_absolute[lane], self.last_absolute[lane]) = (FAR, FAR);
    }

    /// Moves `lane` to the last rank, the lanes after it one up.
    fn demote(&mut self, lane: usize) {
        let old = self.rank[lane];
        for rank in &mut self.rank {
            *rank -= i16::from(*rank > old);
        }
        self.rank[lane] = WINDOW as i16 - 1;
    }

    /// The lane and direction of the polyline with the shortest move from `pen`: on a tie the
    /// first in reading order, then forwards.
    fn nearest(&self, pen: (i32, i32)) -> (usize, bool) {
        let (x, y) = (pen.0 as i16, pen.1 as i16);
        // (bytes << 9 | rank << 5 | lane << 1 | backwards) for each lane and direction: the least
        // wins.
        let mut keys = [0i16; 2 * WINDOW];
        for lane in 0..WINDOW {
            let forward = move_cost(
                self.first_x[lane] - x,
                self.first_y[lane] - y,
                self.first_absolute[lane],
            );
            let backward = move_cost(
                self.last_x[lane] - x,
                self.last_y[lane] - y,
                self.last_absolute[lane],
            ) + self.reversed_extra[lane];
            let rest = self.rank[lane] << 5 | (lane as i16) << 1;
            keys[2 * lane] = forward << 9 | rest;
            keys[2 * lane + 1] = backward << 9 | rest | 1;
        }
        let best = keys.into_iter().min().expect("keys");
        ((best >> 1 & 0xf) as usize, best & 1 == 1)
    }
}

/// The bytes of the shorter of a relative move by (`dx`, `dy`) and an absolute one.
fn move_cost(dx: i16, dy: i16, absolute: i16) -> i16 {
    let digits = |v: i16| {
        let magnitude = v.abs();
        1 + i16::from(magnitude > 9) + i16::from(magnitude > 99) + i16::from(magnitude > 999)
    };
    // A minus sign before dx; before dy, a minus sign or a space.
    (2 + i16::from(dx < 0) + digits(dx) + digits(dy)).min(absolute)
}

/// Appends `point` to the polyline starting at `points[from]`, dropping it if it repeats the last
/// point (an L join) and merging it with the last side if it carries on straight (a crossing
/// through a single module).
fn push_turn(points: &mut Vec<(i32, i32)>, from: usize, point: (i32, i32)) {
    match points[from..] {
        [.., last] if last == point => {}
        [.., a, b] if (a.0 == b.0 && b.0 == point.0) || (a.1 == b.1 && b.1 == point.1) => {
            *points.last_mut().expect("two points") = point;
        }
        _ => points.push(point),
    }
}

/// Path bytes being written in place, up to `at`.
struct Cursor<'a> {
    bytes: &'a mut [u8],
    at: usize,
}

impl Cursor<'_> {
    fn push(&mut self, byte: u8) {
        self.bytes[self.at] = byte;
        self.at += 1;
    }

    /// Appends `value` in decimal without going through `fmt` (the path has thousands of
    /// numbers, nearly all of one or two digits).
    #[inline]
    fn push_int(&mut self, value: i32) {
        if value < 0 {
            self.push(b'-');
        }
        let magnitude = value.unsigned_abs();
        if magnitude < 10 {
            self.push(b'0' + magnitude as u8);
        } else if magnitude < 100 {
            self.push(b'0' + (magnitude / 10) as u8);
            self.push(b'0' + (magnitude % 10) as u8);
        } else {
            let mut digits = [0u8; 10];
            let mut at = digits.len();
            let mut rest = magnitude;
            while rest > 0 {
                at -= 1;
                digits[at] = b'0' + (rest % 10) as u8;
                rest /= 10;
            }
            for &digit in &digits[at..] {
                self.push(digit);
            }
        }
    }
}

/// Appends a move to the first point and a side to each next one; returns the last point.
fn push_polyline(
    out: &mut Cursor,
    pen: Option<(i32, i32)>,
    mut points: impl Iterator<Item = (i32, i32)>,
) -> (i32, i32) {
    let mut last = points.next().expect("two points at least");
    push_move(out, pen, last);
    for point in points {
        if point.1 == last.1 {
            out.push(b'h');
            out.push_int(point.0 - last.0);
        } else {
            out.push(b'v');
            out.push_int(point.1 - last.1);
        }
        last = point;
    }
    last
}

/// The bytes of `M` to `to`.
fn absolute_move_len(to: (i32, i32)) -> usize {
    2 + int_len(to.0) + int_len(to.1)
}

/// Appends the move to `to`: `M` for the first, otherwise the shorter of `m` and `M`.
#[inline]
fn push_move(out: &mut Cursor, pen: Option<(i32, i32)>, to: (i32, i32)) {
    let relative = pen.map(|pen| (to.0 - pen.0, to.1 - pen.1));
    match relative {
        Some((dx, dy))
            if 1 + int_len(dx) + usize::from(dy >= 0) + int_len(dy) <= absolute_move_len(to) =>
        {
            out.push(b'm');
            out.push_int(dx);
            if dy >= 0 {
                out.push(b' ');
            }
            out.push_int(dy);
        }
        _ => {
            out.push(b'M');
            out.push_int(to.0);
            out.push(b' ');
            out.push_int(to.1);
        }
    }
}

/// Characters of `value` in decimal, for values of at most four digits (coordinates are under
/// 400 half modules).
fn int_len(value: i32) -> usize {
    let magnitude = value.unsigned_abs();
    1 + usize::from(value < 0)
        + usize::from(magnitude >= 10)
        + usize::from(magnitude >= 100)
        + usize::from(magnitude >= 1000)
}

#[cfg(test)]
mod tests {
    use super::super::sample::whatsapp_like;
    use super::super::tests::payloads;
    use super::super::{encode, render_svg};
    use super::*;

    /// WhatsApp link payloads as the phone reads them (seeds 1 to `count`).
    fn whatsapp_payloads(count: u64) -> Vec<String> {
        (1..=count)
            .map(super::super::sample::whatsapp_link)
            .collect()
    }

    fn path_data_of(svg: &str) -> &str {
        let start = svg.find(" d=\"").expect("a d attribute") + 4;
        let end = start + svg[start..].find('"').expect("a closing quote");
        &svg[start..end]
    }

    /// The polylines of a path made of `M`, `m`, `h` and `v` commands, in its own units.
    fn parse(d: &str) -> Vec<Vec<(i32, i32)>> {
        let mut lines: Vec<Vec<(i32, i32)>> = Vec::new();
        let mut pen = (0, 0);
        let mut rest = d;
        let number = |rest: &mut &str| -> i32 {
            *rest = rest.trim_start_matches(' ');
            let len = rest
                .char_indices()
                .find(|&(i, c)| !(c.is_ascii_digit() || (c == '-' && i == 0)))
                .map_or(rest.len(), |(i, _)| i);
            let (text, tail) = rest.split_at(len);
            *rest = tail;
            text.parse().expect("an integer")
        };
        while let Some(command) = rest.chars().next() {
            rest = &rest[1..];
            match command {
                'M' => {
                    pen = (number(&mut rest), number(&mut rest));
                    lines.push(vec![pen]);
                }
                'm' => {
                    pen.0 += number(&mut rest);
                    pen.1 += number(&mut rest);
                    lines.push(vec![pen]);
                }
                'h' | 'v' => {
                    let delta = number(&mut rest);
                    assert_ne!(delta, 0, "an empty side");
                    if command == 'h' {
                        pen.0 += delta;
                    } else {
                        pen.1 += delta;
                    }
                    lines.last_mut().expect("a move first").push(pen);
                }
                other => panic!("unexpected path command {other:?} in {d}"),
            }
        }
        lines
    }

    /// Which quarter modules a one-module stroke of the polylines paints (butt caps, miter
    /// joins), the polylines given in half modules: a side paints a band one module wide, each
    /// turn the square around it. Every turn must be a right angle.
    fn painted(lines: &[Vec<(i32, i32)>], size: usize) -> Vec<bool> {
        let quarters = 2 * size;
        let mut painted = vec![false; quarters * quarters];
        let mut paint = |x: i32, y: i32| {
            assert!(x >= 0 && y >= 0 && (x as usize) < quarters && (y as usize) < quarters);
            painted[y as usize * quarters + x as usize] = true;
        };
        for line in lines {
            assert!(line.len() >= 2, "a move without a side");
            for side in line.windows(2) {
                let [(x0, y0), (x1, y1)] = [side[0], side[1]];
                if y0 == y1 {
                    (x0.min(x1)..x0.max(x1)).for_each(|x| (y0 - 1..=y0).for_each(|y| paint(x, y)));
                } else {
                    (y0.min(y1)..y0.max(y1)).for_each(|y| (x0 - 1..=x0).for_each(|x| paint(x, y)));
                }
            }
            for turn in line.windows(3) {
                let horizontal_in = turn[0].1 == turn[1].1;
                let horizontal_out = turn[1].1 == turn[2].1;
                assert_ne!(horizontal_in, horizontal_out, "not a right angle: {turn:?}");
                let (x, y) = turn[1];
                (x - 1..=x).for_each(|x| (y - 1..=y).for_each(|y| paint(x, y)));
            }
        }
        painted
    }

    /// Rasterises with resvg at `scale` pixels per module and returns each pixel's red channel.
    fn rasterise(svg: &str, scale: u32) -> (usize, Vec<u8>) {
        let tree = resvg::usvg::Tree::from_str(svg, &resvg::usvg::Options::default())
            .expect("the SVG parses");
        let side = (tree.size().width() as u32) * scale;
        let mut pixmap = resvg::tiny_skia::Pixmap::new(side, side).expect("a pixmap");
        let transform = resvg::tiny_skia::Transform::from_scale(scale as f32, scale as f32);
        resvg::render(&tree, transform, &mut pixmap.as_mut());
        let red = pixmap.data().chunks(4).map(|rgba| rgba[0]).collect();
        (side as usize, red)
    }

    /// Every pixel is exactly black on a dark module and white on a light one: no anti-aliased
    /// edge, no hairline between lines.
    fn assert_pixel_exact(matrix: &QrMatrix, svg: &str, scale: u32) {
        let (side, red) = rasterise(svg, scale);
        let scale = scale as usize;
        for (i, &value) in red.iter().enumerate() {
            let (x, y) = (i % side / scale, i / side / scale);
            let dark = matrix.is_dark(x.wrapping_sub(QUIET_ZONE), y.wrapping_sub(QUIET_ZONE));
            assert_eq!(
                value,
                if dark { 0 } else { 255 },
                "pixel ({}, {}) of module ({x}, {y}) at {scale} px per module",
                i % side,
                i / side
            );
        }
    }

    fn scan(svg: &str) -> String {
        let (side, red) = rasterise(svg, 4);
        let mut image =
            rqrr::PreparedImage::prepare_from_greyscale(side, side, |x, y| red[y * side + x]);
        let grids = image.detect_grids();
        assert_eq!(grids.len(), 1, "one QR code in the image");
        grids[0].decode().expect("the QR code decodes").1
    }

    #[test]
    fn the_svg_is_one_white_rect_and_one_stroked_path() {
        let svg = render_svg(&whatsapp_like()).expect("encodable");
        assert!(svg.starts_with(HEAD), "{svg}");
        assert!(svg.ends_with("\"/></svg>"), "{svg}");
        assert_eq!(svg.matches("<path").count(), 1, "one path element");
        assert_eq!(svg.matches("<rect").count(), 1, "one background rect");
        assert!(svg.contains(concat!(
            r##"<rect width="100%" height="100%" fill="#fff"/>"##,
            r##"<path transform="scale(.5)" fill="none" stroke="#000" stroke-width="2" d=""##
        )));
        assert!(svg.contains(r#"shape-rendering="crispEdges""#) && svg.contains(r#"role="img""#));
        assert!(
            !svg.contains("style") && !svg.contains("linecap") && !svg.contains("linejoin"),
            "the page's CSP forbids inline styles, and its sanitiser keeps neither cap nor join"
        );
        let tag = &svg[..svg.find('>').expect("a start tag")];
        assert!(
            !tag.contains(" width=") && !tag.contains(" height="),
            "it must scale: {tag}"
        );
    }

    #[test]
    fn the_view_box_spans_the_symbol_and_the_quiet_zone() {
        for payload in ["a", whatsapp_like().as_str()] {
            let matrix = encode(payload).expect("encodable");
            let size = matrix.width() + 2 * QUIET_ZONE;
            assert!(
                matrix
                    .to_svg()
                    .contains(&format!(r#"viewBox="0 0 {size} {size}""#))
            );
        }
    }

    #[test]
    fn the_stroke_paints_exactly_the_dark_modules_inside_the_quiet_zone() {
        for payload in payloads().into_iter().chain(whatsapp_payloads(20)) {
            let matrix = encode(&payload).expect("encodable");
            let size = matrix.width() + 2 * QUIET_ZONE;
            let painted = painted(&parse(path_data_of(&matrix.to_svg())), size);
            for y in 0..size {
                for x in 0..size {
                    let quarters = [(0, 0), (1, 0), (0, 1), (1, 1)]
                        .map(|(dx, dy)| painted[(2 * y + dy) * 2 * size + 2 * x + dx]);
                    let dark =
                        matrix.is_dark(x.wrapping_sub(QUIET_ZONE), y.wrapping_sub(QUIET_ZONE));
                    assert_eq!(
                        quarters,
                        [dark; 4],
                        "module ({x}, {y}) of a {}-byte payload",
                        payload.len()
                    );
                }
            }
        }
    }

    #[test]
    fn whatsapp_payloads_draw_in_at_most_5_kib_and_scan_back() {
        for payload in whatsapp_payloads(40) {
            let svg = render_svg(&payload).expect("encodable");
            assert!(svg.len() <= 5 * 1024, "{} bytes for {payload}", svg.len());
            assert_eq!(scan(&svg), payload);
        }
    }

    #[test]
    fn resvg_renders_every_module_crisply_at_whole_pixel_scales() {
        for payload in ["a".to_owned(), whatsapp_like(), "x7Q".repeat(100)] {
            let matrix = encode(&payload).expect("encodable");
            let svg = matrix.to_svg();
            for scale in 1..=4 {
                assert_pixel_exact(&matrix, &svg, scale);
            }
        }
    }

    #[test]
    fn push_int_writes_signed_decimals() {
        let mut bytes = [0u8; 64];
        let mut out = Cursor {
            bytes: &mut bytes,
            at: 0,
        };
        for value in [0, 7, -1, 42, -177, 1_000_000] {
            out.push_int(value);
            out.push(b',');
        }
        let written = out.at;
        assert_eq!(&bytes[..written], b"0,7,-1,42,-177,1000000,");
        for value in [0, 9, 10, -10, 99, -100, 354, -1000, 9999] {
            assert_eq!(int_len(value), value.to_string().len(), "{value}");
        }
    }
}
