"""An interactive viewer of per-voxel results on a subject's flattened cortex: one self-contained
HTML file (the subject's pycortex flat surface, every map's colours per vertex, the regions,
inline WebGL) that opens from the file system with no server and no network
(docs/alignment.md#the-brain-viewer). ``brain_regions.py view`` writes it for a results folder.

Each vertex of the flat surface takes the value of its nearest voxel (pycortex's "nearest"
mapper); vertices without a shown voxel are grey. In the page: a map menu, drag to pan, the
wheel to zoom, and a region list (each region's mean per map) that outlines a region on the
cortex when the pointer is on its row.
"""

import base64
import gzip
import json

import numpy as np

import run_utils

NO_DATA = (200, 200, 200)  # the colour of cortex without a shown voxel
COLORBAR_STOPS = 11  # colours of a map's colour bar in the page


def vertex_voxels(cortex, anatomy, mask):
    """Per vertex of the merged flat surface (left, then right hemisphere), the index among the
    subject's voxels (``mask``, the thick mask, C order) of its nearest voxel: (n_vertices,)
    int64, -1 where it has none in the mask."""
    mapper = cortex.get_mapper(anatomy.subject, anatomy.transform, "nearest")
    position = np.full(mask.size, -1, np.int64)
    position[np.flatnonzero(mask.ravel())] = np.arange(int(mask.sum()))
    nearest = []
    for matrix in mapper.masks:
        matrix = matrix.tocsr()
        has = np.diff(matrix.indptr) > 0
        column = np.full(matrix.shape[0], -1, np.int64)
        column[has] = matrix.indices[matrix.indptr[:-1][has]]
        nearest.append(np.where(column >= 0, position[np.maximum(column, 0)], -1))
    return np.concatenate(nearest)


def flat_surface(cortex, anatomy):
    """The subject's flat surface, both hemispheres: (n_vertices, 2) float32 positions and
    (n_triangles, 3) uint32 vertex indices."""
    points, triangles = cortex.db.get_surf(anatomy.subject, "flat", merge=True, nudge=True)
    return points[:, :2].astype(np.float32), triangles.astype(np.uint32)


def vertex_colours(values, nearest, shown, cmap, vmin, vmax):
    """(n_vertices, 3) uint8 colours of per-voxel ``values`` (n_voxels,) through the
    matplotlib colour map ``cmap`` from ``vmin`` to ``vmax``; ``NO_DATA`` where a vertex's
    nearest voxel is missing, not ``shown`` or not finite."""
    from matplotlib import colormaps

    per_vertex = np.full(nearest.size, np.nan)
    has = nearest >= 0
    per_vertex[has] = np.where(shown[nearest[has]], values[nearest[has]], np.nan)
    scaled = np.clip((per_vertex - vmin) / (vmax - vmin), 0, 1)
    rgb = (colormaps[cmap](np.nan_to_num(scaled))[:, :3] * 255).round().astype(np.uint8)
    rgb[~np.isfinite(per_vertex)] = NO_DATA
    return rgb


def colour_bar(cmap, vmin, vmax):
    """A map's colour bar for the page: its ends and ``COLORBAR_STOPS`` CSS colours."""
    from matplotlib import colormaps, colors

    stops = [colors.to_hex(colormaps[cmap](x)) for x in np.linspace(0, 1, COLORBAR_STOPS)]
    return {"min": float(vmin), "max": float(vmax), "stops": stops}


def write_viewer(path, title, surface, maps, regions, overwrite=False):
    """Write the viewer at ``path`` atomically.

    Parameters
    ----------
    surface : (points, triangles) of ``flat_surface``
    maps : list of dicts: ``name``, ``colours`` ((n_vertices, 3) uint8, ``vertex_colours``),
        ``bar`` (``colour_bar``)
    regions : list of dicts: ``name``, ``vertices`` (indices), ``means`` (one number or None
        per map)
    """
    points, triangles = surface
    region_of = np.zeros(len(points), np.float32)  # 0: none; region k: k + 1
    for index, region in enumerate(regions):
        region_of[np.asarray(region["vertices"], np.int64)] = index + 1
    payload = {
        "title": title,
        "points": _packed(points), "triangles": _packed(triangles),
        "regionOf": _packed(region_of),
        "maps": [{"name": m["name"], "colours": _packed(m["colours"]), "bar": m["bar"]}
                 for m in maps],
        "regions": [{"name": r["name"], "means": r["means"]} for r in regions]}
    page = PAGE.replace("__TITLE__", _escaped(title)).replace(
        "__DATA__", json.dumps(run_utils.json_safe(payload)).replace("</", "<\\/"))
    run_utils.write_text(path, page, overwrite)
    return path


def _packed(array):
    """An array for the page: its dtype and the base64 of its gzipped bytes."""
    array = np.ascontiguousarray(array)
    return {"dtype": array.dtype.name,
            "data": base64.b64encode(gzip.compress(array.tobytes(), 6)).decode("ascii")}


def _escaped(text):
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;"))


PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>__TITLE__</title>
<style>
body { font: 14px sans-serif; margin: 0; display: flex; height: 100vh; }
#main { flex: 1; display: flex; flex-direction: column; min-width: 0; }
#bar { padding: 6px 10px; display: flex; gap: 12px; align-items: center; }
#cortex { flex: 1; width: 100%; min-height: 0; background: white; cursor: grab; }
#scale { height: 12px; width: 220px; border: 1px solid #888; }
#side { width: 300px; overflow-y: auto; border-left: 1px solid #ccc; padding: 6px; }
table { border-collapse: collapse; width: 100%; }
td, th { padding: 2px 4px; text-align: right; }
td:first-child, th:first-child { text-align: left; }
tr.region:hover { background: #ffe9a8; }
#status { color: #a00; }
</style>
</head>
<body>
<div id="main">
  <div id="bar">
    <strong>__TITLE__</strong>
    <select id="map" aria-label="map"></select>
    <span id="low"></span><div id="scale"></div><span id="high"></span>
    <span id="status"></span>
  </div>
  <canvas id="cortex"></canvas>
</div>
<div id="side"><table id="regions"></table></div>
<script id="data" type="application/json">__DATA__</script>
<script>
"use strict";
const TYPES = {float32: Float32Array, uint32: Uint32Array, uint8: Uint8Array};
async function unpack(packed) {
  const bytes = Uint8Array.from(atob(packed.data), c => c.charCodeAt(0));
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
  const buffer = await new Response(stream).arrayBuffer();
  return new TYPES[packed.dtype](buffer);
}
function shader(gl, type, source) {
  const s = gl.createShader(type);
  gl.shaderSource(s, source);
  gl.compileShader(s);
  if (!gl.getShaderParameter(s, gl.COMPILE_STATUS)) throw new Error(gl.getShaderInfoLog(s));
  return s;
}
function buffer(gl, target, array) {
  const b = gl.createBuffer();
  gl.bindBuffer(target, b);
  gl.bufferData(target, array, gl.STATIC_DRAW);
  return b;
}
async function main() {
  const data = JSON.parse(document.getElementById("data").textContent);
  const canvas = document.getElementById("cortex");
  const gl = canvas.getContext("webgl", {preserveDrawingBuffer: true});
  if (!gl) throw new Error("this browser has no WebGL");
  if (!gl.getExtension("OES_element_index_uint")) throw new Error("no 32-bit indices in WebGL");
  const points = await unpack(data.points), triangles = await unpack(data.triangles);
  const regionOf = await unpack(data.regionOf);
  const colours = await Promise.all(data.maps.map(m => unpack(m.colours)));
  const program = gl.createProgram();
  gl.attachShader(program, shader(gl, gl.VERTEX_SHADER, `
    attribute vec2 position; attribute vec3 colour; attribute float region;
    uniform vec2 scale, offset; uniform float selected;
    varying vec3 tint; varying float chosen;
    void main() {
      gl_Position = vec4(position * scale + offset, 0.0, 1.0);
      tint = colour / 255.0;
      chosen = selected > 0.5 && abs(region - selected) < 0.5 ? 1.0 : 0.0;
    }`));
  gl.attachShader(program, shader(gl, gl.FRAGMENT_SHADER, `
    precision mediump float; varying vec3 tint; varying float chosen;
    void main() {
      // a region under the pointer: its outline, where chosen falls off between vertices
      float edge = chosen > 0.01 && chosen < 0.99 ? 1.0 : 0.0;
      gl_FragColor = vec4(mix(tint, vec3(0.0, 0.8, 0.2), edge), 1.0);
    }`));
  gl.linkProgram(program);
  gl.useProgram(program);
  const attribute = (name, array, size, type) => {
    buffer(gl, gl.ARRAY_BUFFER, array);
    const at = gl.getAttribLocation(program, name);
    gl.enableVertexAttribArray(at);
    gl.vertexAttribPointer(at, size, type, false, 0, 0);
    return at;
  };
  attribute("position", points, 2, gl.FLOAT);
  attribute("region", regionOf, 1, gl.FLOAT);
  const colourBuffers = colours.map(c => buffer(gl, gl.ARRAY_BUFFER, c));
  const colourAt = gl.getAttribLocation(program, "colour");
  gl.enableVertexAttribArray(colourAt);
  buffer(gl, gl.ELEMENT_ARRAY_BUFFER, triangles);
  let low = [Infinity, Infinity], high = [-Infinity, -Infinity];
  for (let i = 0; i < points.length; i += 2) {
    for (const k of [0, 1]) {
      low[k] = Math.min(low[k], points[i + k]);
      high[k] = Math.max(high[k], points[i + k]);
    }
  }
  const view = {zoom: 1, x: 0, y: 0, map: 0, selected: 0};
  function draw() {
    const width = canvas.clientWidth, height = canvas.clientHeight;
    canvas.width = width; canvas.height = height;
    gl.viewport(0, 0, width, height);
    const fit = 1.9 / Math.max((high[0] - low[0]) / width, (high[1] - low[1]) / height);
    const sx = fit * view.zoom / width, sy = fit * view.zoom / height;
    gl.uniform2f(gl.getUniformLocation(program, "scale"), sx, sy);
    gl.uniform2f(gl.getUniformLocation(program, "offset"),
                 -(low[0] + high[0]) / 2 * sx + view.x, -(low[1] + high[1]) / 2 * sy + view.y);
    gl.uniform1f(gl.getUniformLocation(program, "selected"), view.selected);
    gl.bindBuffer(gl.ARRAY_BUFFER, colourBuffers[view.map]);
    gl.vertexAttribPointer(colourAt, 3, gl.UNSIGNED_BYTE, false, 0, 0);
    gl.clearColor(1, 1, 1, 1);
    gl.clear(gl.COLOR_BUFFER_BIT);
    gl.drawElements(gl.TRIANGLES, triangles.length, gl.UNSIGNED_INT, 0);
  }
  const menu = document.getElementById("map");
  data.maps.forEach((m, i) => menu.add(new Option(m.name, i)));
  function choose(index) {
    view.map = index;
    const bar = data.maps[index].bar;
    document.getElementById("scale").style.background =
      "linear-gradient(to right, " + bar.stops.join(", ") + ")";
    document.getElementById("low").textContent = bar.min.toPrecision(3);
    document.getElementById("high").textContent = bar.max.toPrecision(3);
    draw();
  }
  menu.addEventListener("change", () => choose(Number(menu.value)));
  const table = document.getElementById("regions");
  if (data.regions.length) {
    const head = table.insertRow();
    ["region", ...data.maps.map((m, i) => "map " + (i + 1))].forEach(text => {
      const cell = document.createElement("th");
      cell.textContent = text;
      cell.title = text.startsWith("map ") ? data.maps[Number(text.slice(4)) - 1].name : "";
      head.appendChild(cell);
    });
  }
  data.regions.forEach((r, i) => {
    const row = table.insertRow();
    row.className = "region";
    row.insertCell().textContent = r.name;
    r.means.forEach(v => { row.insertCell().textContent = v === null ? "" : v.toFixed(3); });
    row.addEventListener("mouseenter", () => { view.selected = i + 1; draw(); });
    row.addEventListener("mouseleave", () => { view.selected = 0; draw(); });
  });
  let drag = null;
  canvas.addEventListener("mousedown", e => { drag = [e.clientX, e.clientY]; });
  window.addEventListener("mouseup", () => { drag = null; });
  window.addEventListener("mousemove", e => {
    if (!drag) return;
    view.x += 2 * (e.clientX - drag[0]) / canvas.clientWidth;
    view.y -= 2 * (e.clientY - drag[1]) / canvas.clientHeight;
    drag = [e.clientX, e.clientY];
    draw();
  });
  canvas.addEventListener("wheel", e => {
    e.preventDefault();
    view.zoom *= Math.exp(-e.deltaY / 500);
    draw();
  }, {passive: false});
  window.addEventListener("resize", draw);
  choose(0);
  document.body.dataset.ready = "true";
}
main().catch(error => {
  document.getElementById("status").textContent = String(error);
  document.body.dataset.ready = "error";
  throw error;
});
</script>
</body>
</html>
"""
