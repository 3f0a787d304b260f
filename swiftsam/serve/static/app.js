// swiftsam browser demo: the server encodes the image once (/v1/embed, float16 .npy); every click is decoded here
// with the model's exported decoder (/v1/decoder.onnx, SAM's interface) on onnxruntime-web, or by /v1/segment.
"use strict";

const state = {
  ready: false, mode: null, file: null, width: 0, height: 0, geometry: null, embedding: null, session: null,
  points: [], box: null, mask: null, busy: false, error: null, decodes: 0,
};
window.swiftsam = state;  // read by the browser test

const $ = (id) => document.getElementById(id);
const status = (text) => { $("status").textContent = text; };

function authHeaders() {
  const token = $("token").value.trim();
  if (token) localStorage.setItem("swiftsam-token", token);
  return token ? { Authorization: "Bearer " + token } : {};
}

async function post(path, form) {
  const r = await fetch(path, { method: "POST", body: form, headers: authHeaders() });
  if (!r.ok) {
    let detail = r.statusText;
    try { detail = (await r.json()).detail; } catch (e) { /* not JSON */ }
    throw new Error(`${path}: ${r.status} ${detail}`);
  }
  return r;
}

// ---- .npy (float16, C order) -> Float32Array
function halfToFloat(h) {
  const s = (h & 0x8000) ? -1 : 1, e = (h >> 10) & 0x1f, f = h & 0x3ff;
  if (e === 0) return s * Math.pow(2, -14) * (f / 1024);
  if (e === 31) return f ? NaN : s * Infinity;
  return s * Math.pow(2, e - 15) * (1 + f / 1024);
}

function parseNpy(buffer) {
  const bytes = new Uint8Array(buffer);
  const major = bytes[6];
  const view = new DataView(buffer);
  const headerLen = major >= 2 ? view.getUint32(8, true) : view.getUint16(8, true);
  const start = major >= 2 ? 12 : 10;
  const header = new TextDecoder().decode(bytes.subarray(start, start + headerLen));
  if (!header.includes("'<f2'")) throw new Error("expected a float16 .npy, got " + header);
  const shape = header.match(/\(([^)]*)\)/)[1].split(",").filter((v) => v.trim()).map(Number);
  const halves = new Uint16Array(buffer.slice(start + headerLen));
  const out = new Float32Array(halves.length);
  for (let i = 0; i < halves.length; i++) out[i] = halfToFloat(halves[i]);
  return { data: out, shape };
}

// ---- COCO RLE (compressed string, column-major) -> Uint8Array mask (row-major)
function decodeRle(rle) {
  const [h, w] = rle.size, s = rle.counts, counts = [];
  let p = 0;
  while (p < s.length) {
    let x = 0, k = 0, more = 1, c;
    while (more) {
      c = s.charCodeAt(p) - 48; x |= (c & 0x1f) << (5 * k); more = c & 0x20; p++; k++;
      if (!more && (c & 0x10)) x |= -1 << (5 * k);
    }
    if (counts.length > 2) x += counts[counts.length - 2];
    counts.push(x);
  }
  const mask = new Uint8Array(h * w);
  let idx = 0, val = 0;
  for (const n of counts) {
    for (let j = 0; j < n; j++, idx++) if (val) mask[(idx % h) * w + Math.floor(idx / h)] = 1;
    val ^= 1;
  }
  return mask;
}

// ---- the decoder in the browser (SAM's flat prompt format, in the prompt frame)
function boxPrior(box, g) {
  const [mh, mw] = g.mask_input_size, ps = g.prompt_size, out = new Float32Array(mh * mw);
  for (let y = 0; y < mh; y++) for (let x = 0; x < mw; x++) {
    const cy = (y + 0.5) * ps / mh, cx = (x + 0.5) * ps / mw;
    out[y * mw + x] = (cy >= box[1] && cy <= box[3] && cx >= box[0] && cx <= box[2]) ? 4 : -4;
  }
  return out;
}

async function decodeHere() {
  const g = state.geometry, [sx, sy] = g.prompt_scale, coords = [], labels = [];
  for (const p of state.points) { coords.push(p.x * sx, p.y * sy); labels.push(p.label); }
  let box = null;
  if (state.box) {
    box = [state.box[0] * sx, state.box[1] * sy, state.box[2] * sx, state.box[3] * sy];
    coords.push(box[0], box[1], box[2], box[3]); labels.push(2, 3);
  } else { coords.push(0, 0); labels.push(-1); }
  const n = labels.length, [mh, mw] = g.mask_input_size;
  const prior = box && g.box_mask_prior;
  const feeds = {
    image_embeddings: new ort.Tensor("float32", state.embedding.data, state.embedding.shape),
    point_coords: new ort.Tensor("float32", Float32Array.from(coords), [1, n, 2]),
    point_labels: new ort.Tensor("float32", Float32Array.from(labels), [1, n]),
    mask_input: new ort.Tensor("float32", prior ? boxPrior(box, g) : new Float32Array(mh * mw), [1, 1, mh, mw]),
    has_mask_input: new ort.Tensor("float32", Float32Array.from([prior ? 1 : 0]), [1]),
    orig_im_size: new ort.Tensor("float32", Float32Array.from([state.height, state.width]), [2]),
  };
  const out = await state.session.run(feeds);
  const masks = out.masks, iou = out.iou_predictions.data, tokens = masks.dims[1];
  let t = 0;  // the single-mask output, or the best of 1..3 for a model whose token 0 is untrained
  if (g.multimask_only && tokens > 1) { t = 1; for (let k = 2; k < tokens; k++) if (iou[k] > iou[t]) t = k; }
  const hw = state.width * state.height, logits = masks.data, mask = new Uint8Array(hw);
  for (let i = 0; i < hw; i++) mask[i] = logits[t * hw + i] > g.mask_threshold ? 1 : 0;
  return mask;
}

async function decodeOnServer() {
  const prompts = { multimask: false };
  const pts = state.points.map((p) => [p.x, p.y, p.label]);
  if (state.box) prompts.boxes = [state.box];
  if (pts.length) prompts.points = [pts];
  const form = new FormData();
  form.append("image", state.file);
  form.append("prompts", JSON.stringify(prompts));
  const body = await (await post("/v1/segment", form)).json();
  return decodeRle(body.masks[0]);
}

async function update() {
  if (!state.ready || (!state.points.length && !state.box)) { state.mask = null; draw(); return; }
  state.busy = true;
  try {
    const t0 = performance.now();
    state.mask = state.mode === "onnxruntime-web" ? await decodeHere() : await decodeOnServer();
    state.decodes += 1;
    status(`${state.mode}: mask in ${(performance.now() - t0).toFixed(0)} ms`);
  } catch (e) {
    state.error = String(e); status("error: " + e.message);
  } finally { state.busy = false; }
  draw();
}

// ---- drawing and input
function draw(dragBox) {
  const c = $("overlay"), ctx = c.getContext("2d");
  ctx.clearRect(0, 0, c.width, c.height);
  if (state.mask) {
    const img = ctx.createImageData(state.width, state.height);
    for (let i = 0; i < state.mask.length; i++) if (state.mask[i]) {
      img.data[4 * i] = 30; img.data[4 * i + 1] = 144; img.data[4 * i + 2] = 255; img.data[4 * i + 3] = 140;
    }
    ctx.putImageData(img, 0, 0);
  }
  const b = dragBox || state.box;
  if (b) { ctx.strokeStyle = "#0f0"; ctx.lineWidth = 2; ctx.strokeRect(b[0], b[1], b[2] - b[0], b[3] - b[1]); }
  for (const p of state.points) {
    ctx.fillStyle = p.label ? "#0c0" : "#d00";
    ctx.beginPath(); ctx.arc(p.x, p.y, 4, 0, 2 * Math.PI); ctx.fill();
  }
}

function pos(ev) {
  const r = $("overlay").getBoundingClientRect();
  const x = (ev.clientX - r.left) * state.width / r.width, y = (ev.clientY - r.top) * state.height / r.height;
  return [Math.min(Math.max(x, 0), state.width), Math.min(Math.max(y, 0), state.height)];
}

let dragStart = null;
function setupInput() {
  const c = $("overlay");
  c.addEventListener("contextmenu", (ev) => ev.preventDefault());
  c.addEventListener("mousedown", (ev) => { dragStart = pos(ev); });
  c.addEventListener("mousemove", (ev) => {
    if (!dragStart) return;
    const [x, y] = pos(ev);
    draw([Math.min(dragStart[0], x), Math.min(dragStart[1], y), Math.max(dragStart[0], x), Math.max(dragStart[1], y)]);
  });
  c.addEventListener("mouseup", (ev) => {
    if (!dragStart || !state.ready) { dragStart = null; return; }
    const [x, y] = pos(ev), [x0, y0] = dragStart;
    dragStart = null;
    if (Math.abs(x - x0) > 4 && Math.abs(y - y0) > 4) {
      state.box = [Math.min(x0, x), Math.min(y0, y), Math.max(x0, x), Math.max(y0, y)];
    } else {
      state.points.push({ x, y, label: ev.shiftKey || ev.button === 2 ? 0 : 1 });
    }
    update();
  });
  $("clear").addEventListener("click", () => { state.points = []; state.box = null; update(); });
  $("file").addEventListener("change", (ev) => { if (ev.target.files[0]) openImage(ev.target.files[0]); });
  $("token").value = localStorage.getItem("swiftsam-token") || "";
}

async function loadDecoder() {
  // ?decoder=server: always ask /v1/segment (what the page does where onnxruntime-web is absent)
  if (new URLSearchParams(location.search).get("decoder") === "server") return null;
  if (window.ortMissing || typeof ort === "undefined") return null;
  try {
    ort.env.wasm.wasmPaths = "/ort/";
    ort.env.wasm.numThreads = 1;  // threads need cross-origin isolation
    const r = await fetch("/v1/decoder.onnx", { headers: authHeaders() });
    if (!r.ok) throw new Error(`/v1/decoder.onnx: ${r.status}`);
    return await ort.InferenceSession.create(await r.arrayBuffer(), { executionProviders: ["wasm"] });
  } catch (e) {
    console.warn("in-browser decoder unavailable, using /v1/segment:", e);
    return null;
  }
}

async function openImage(file) {
  Object.assign(state, { ready: false, file, points: [], box: null, mask: null, error: null });
  status("reading image ...");
  try {
    const bitmap = await createImageBitmap(file, { imageOrientation: "from-image" });  // EXIF, as the server
    state.width = bitmap.width; state.height = bitmap.height;
    for (const id of ["image", "overlay"]) { $(id).width = bitmap.width; $(id).height = bitmap.height; }
    $("image").getContext("2d").drawImage(bitmap, 0, 0);
    status("computing the embedding on the server ...");
    const form = new FormData();
    form.append("image", file);
    const r = await post("/v1/embed", form);
    state.geometry = JSON.parse(r.headers.get("X-Swiftsam-Geometry"));
    const [h, w] = state.geometry.original_size;
    if (h !== state.height || w !== state.width) throw new Error(`server read ${w}x${h}, browser ${state.width}x${state.height}`);
    const onnxOk = state.geometry.features.length === 1 && !state.geometry.dynamic_multimask;
    if (onnxOk) state.embedding = parseNpy(await r.arrayBuffer());
    if (onnxOk && !state.session) state.session = await loadDecoder();
    state.mode = onnxOk && state.session ? "onnxruntime-web" : "server";
    if (state.mode === "onnxruntime-web") {  // one decode to warm the wasm kernels: the first click is then quick
      state.points = [{ x: state.width / 2, y: state.height / 2, label: 1 }];
      await decodeHere();
      state.points = [];
    }
    state.ready = true;
    status(`ready (${state.mode}): click the object, or drag a box`);
  } catch (e) {
    state.error = String(e); status("error: " + e.message);
  }
  draw();
}

setupInput();
