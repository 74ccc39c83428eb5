// Draw a digit: strokes on a canvas (pointer events: mouse, touch and pen alike), sent as a PNG to /api/predict
// while drawing; the answer's probabilities as bars and the prepared 28×28 image. No libraries, no network beyond
// this app.
"use strict";

const INK_WIDTH = 0.075; // stroke width as a share of the canvas side: MNIST-like strokes for a digit filling it
const pad = document.getElementById("pad");
const ctx = pad.getContext("2d");
const seen = document.getElementById("seen").getContext("2d");
const $ = (id) => document.getElementById(id);

const strokes = []; // each stroke: points [x, y] in [0, 1] of the canvas side
let current = null; // the stroke being drawn
let inFlight = false; // one request at a time; changes meanwhile are sent when it returns
let pending = false;
let epoch = 0; // bumped by clear, undo and upload: answers to older requests are dropped

function setBusy() {
  document.body.dataset.busy = String(inFlight || pending);
}

function fitCanvas() {
  const side = Math.round(pad.getBoundingClientRect().width * (window.devicePixelRatio || 1));
  if (side > 0 && pad.width !== side) {
    pad.width = pad.height = side;
    redraw();
  }
}

function redraw() {
  const side = pad.width;
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, side, side);
  ctx.strokeStyle = ctx.fillStyle = "#000";
  ctx.lineWidth = INK_WIDTH * side;
  ctx.lineCap = ctx.lineJoin = "round";
  for (const stroke of strokes) {
    const [x0, y0] = stroke[0];
    ctx.beginPath();
    if (stroke.length === 1) {
      ctx.arc(x0 * side, y0 * side, ctx.lineWidth / 2, 0, 2 * Math.PI);
      ctx.fill();
      continue;
    }
    ctx.moveTo(x0 * side, y0 * side);
    for (const [x, y] of stroke.slice(1)) ctx.lineTo(x * side, y * side);
    ctx.stroke();
  }
}

function point(event) {
  const box = pad.getBoundingClientRect();
  return [(event.clientX - box.left) / box.width, (event.clientY - box.top) / box.height];
}

pad.addEventListener("pointerdown", (event) => {
  if (!event.isPrimary || event.button > 0) return;
  event.preventDefault();
  pad.setPointerCapture(event.pointerId);
  current = [point(event)];
  strokes.push(current);
  $("source").textContent = "";
  redraw();
  schedule();
});

pad.addEventListener("pointermove", (event) => {
  if (!current || !event.isPrimary) return;
  const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
  for (const e of events.length ? events : [event]) current.push(point(e));
  redraw();
  schedule();
});

for (const type of ["pointerup", "pointercancel"]) {
  pad.addEventListener(type, (event) => {
    if (!current || !event.isPrimary) return;
    current = null;
    schedule();
  });
}

$("undo").addEventListener("click", () => {
  strokes.pop();
  epoch += 1;
  redraw();
  schedule();
});

$("clear").addEventListener("click", () => {
  strokes.length = 0;
  epoch += 1;
  redraw();
  schedule();
});

$("file").addEventListener("change", (event) => {
  const file = event.target.files[0];
  event.target.value = ""; // the same file can be chosen again
  if (!file) return;
  strokes.length = 0;
  epoch += 1;
  redraw();
  $("source").textContent = `uploaded: ${file.name}`;
  const form = new FormData(); // multipart: the app names the file in its answer and judges the bytes, not the type
  form.append("file", file);
  send(form);
});

// Send the drawing now, or as soon as the request in flight returns.
function schedule() {
  if (!strokes.length) {
    pending = false;
    showNothing();
    setBusy();
    return;
  }
  if (inFlight) {
    pending = true;
    setBusy();
    return;
  }
  inFlight = true; // set before any await: a test that waits for data-busy=false sees this request
  setBusy();
  pad.toBlob((blob) => {
    inFlight = false;
    send(blob);
  }, "image/png");
}

// POST a PNG blob (its type, image/png, is the request's) or a FormData upload.
async function send(body) {
  const sentIn = epoch;
  inFlight = true;
  setBusy();
  try {
    const reply = await fetch("/api/predict", { method: "POST", body });
    const answer = await reply.json().catch(() => ({ error: `HTTP ${reply.status}` }));
    if (sentIn === epoch) {
      if (reply.ok) show(answer);
      else showError(answer.error || `HTTP ${reply.status}`);
    }
  } catch (err) {
    if (sentIn === epoch) showError(`the app did not answer (${err.message})`);
  } finally {
    inFlight = false;
    if (pending) {
      pending = false;
      schedule();
    }
    setBusy();
  }
}

function bars() {
  const list = $("bars");
  if (!list.children.length) {
    for (let d = 0; d < 10; d++) {
      const row = document.createElement("li");
      row.innerHTML = `<span class="digit">${d}</span><span class="bar"><span class="fill"></span></span>` +
        `<span class="value"></span>`;
      list.append(row);
    }
  }
  return [...list.children];
}

function show(answer) {
  $("error").hidden = true;
  $("prediction").textContent = String(answer.class);
  $("confidence").textContent = `${(100 * answer.confidence).toFixed(1)} % sure`;
  bars().forEach((row, d) => {
    const p = answer.probabilities[d];
    row.classList.toggle("top", d === answer.class);
    row.querySelector(".fill").style.width = `${(100 * p).toFixed(1)}%`;
    row.querySelector(".value").textContent = `${(100 * p).toFixed(1)} %`;
  });
  const image = seen.createImageData(28, 28);
  answer.prepared.flat().forEach((v, i) => {
    const grey = Math.round(255 * v);
    image.data.set([grey, grey, grey, 255], 4 * i);
  });
  seen.putImageData(image, 0, 0);
}

function showNothing() {
  $("error").hidden = true;
  $("prediction").textContent = "–";
  $("confidence").textContent = "";
  bars().forEach((row) => {
    row.classList.remove("top");
    row.querySelector(".fill").style.width = "0";
    row.querySelector(".value").textContent = "";
  });
  seen.clearRect(0, 0, 28, 28);
}

function showError(message) {
  showNothing();
  $("error").textContent = message;
  $("error").hidden = false;
}

fetch("/api/health")
  .then((reply) => reply.json())
  .then((health) => { $("model").textContent = health.model; })
  .catch(() => { $("model").textContent = "(not reachable)"; });
new ResizeObserver(fitCanvas).observe(pad);
fitCanvas();
showNothing();
