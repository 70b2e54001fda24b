// The ugen page: plain DOM and fetch against the JSON API (no build step, no framework).
"use strict";

const $ = (id) => document.getElementById(id);
let picked = null; // the image to caption or ask about

// Show an answer and how long the server took, or the server's one-line error.
function show(out, text, answer) {
  out.classList.remove("error");
  const said = document.createElement("span");
  said.className = "answer";
  said.textContent = text;
  const time = document.createElement("span");
  time.className = "time";
  time.textContent = `${(answer.seconds * 1000).toFixed(0)} ms, batch of ${answer.batch.requests}`;
  out.replaceChildren(said, time);
}

function fail(out, message) {
  out.classList.add("error");
  out.textContent = message;
}

async function call(path, body, isJson) {
  const response = await fetch(path, {
    method: "POST",
    body: isJson ? JSON.stringify(body) : body,
    headers: isJson ? { "Content-Type": "application/json" } : {},
  });
  const answer = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) throw new Error(answer.error || `HTTP ${response.status}`);
  return answer;
}

function pick(file) {
  if (!file) return;
  picked = file;
  const preview = $("preview");
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  $("drop-hint").textContent = file.name;
  $("caption-btn").disabled = false;
  $("ask-btn").disabled = false;
}

async function look(path, out, fields) {
  const form = new FormData();
  form.append("image", picked);
  for (const [key, value] of Object.entries(fields)) form.append(key, value);
  out.classList.remove("error");
  out.textContent = "…";
  try {
    const answer = await call(path, form, false);
    show(out, answer.caption ?? answer.answer, answer);
  } catch (err) {
    fail(out, err.message);
  }
}

async function draw(event) {
  event.preventDefault();
  const status = $("draw-status"), grid = $("draw-grid");
  status.classList.remove("error");
  status.textContent = "drawing…";
  try {
    const answer = await call("/generate", {
      prompt: $("draw-prompt").value,
      num: Number($("draw-num").value),
      cfg: Number($("draw-cfg").value),
      temperature: Number($("draw-temperature").value),
      seed: Number($("draw-seed").value),
    }, true);
    grid.replaceChildren(...answer.images.map((png, i) => {
      const img = document.createElement("img");
      img.src = `data:image/png;base64,${png}`;
      img.alt = `${$("draw-prompt").value} (${i + 1})`;
      const plan = answer.plans && answer.plans[i];
      if (plan === null || plan === undefined) return img;
      // a model that plans: the layout it wrote before drawing, under its image
      const figure = document.createElement("figure");
      const caption = document.createElement("figcaption");
      caption.className = "plan";
      caption.textContent = plan;
      figure.append(img, caption);
      return figure;
    }));
    show(status, `${answer.images.length} image${answer.images.length > 1 ? "s" : ""}`, answer);
  } catch (err) {
    grid.replaceChildren();
    fail(status, err.message);
  }
}

async function write(event) {
  event.preventDefault();
  const out = $("text-out");
  out.classList.remove("error");
  out.textContent = "…";
  const images = $("text-images").checked;
  try {
    const answer = await call("/text", {
      prompt: $("text-prompt").value,
      // with images the model writes to its length: a few scenes, each with its picture
      max_new_tokens: images ? null : Number($("text-tokens").value),
      images,
    }, true);
    if (!images) {
      show(out, answer.text, answer);
      return;
    }
    // text with images inside it: each part in order, then the time
    show(out, "", answer);
    const said = out.querySelector(".answer");
    for (const part of answer.parts) {
      if (part.text !== undefined) {
        said.append(part.text + " ");
      } else {
        const img = document.createElement("img");
        img.src = `data:image/png;base64,${part.image}`;
        img.className = "inline";
        said.append(img, " ");
      }
    }
  } catch (err) {
    fail(out, err.message);
  }
}

window.addEventListener("DOMContentLoaded", async () => {
  const drop = $("drop");
  $("image-input").addEventListener("change", (e) => pick(e.target.files[0]));
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    pick(e.dataTransfer.files[0]);
  });
  $("caption-btn").addEventListener("click", () => look("/caption", $("caption-out"), {}));
  $("ask-btn").addEventListener("click", () => look("/ask", $("answer-out"), { question: $("question").value }));
  $("draw-form").addEventListener("submit", draw);
  $("text-form").addEventListener("submit", write);
  try {
    const health = await (await fetch("/health")).json();
    $("model").textContent = `${health.model} · ${health.image_size}×${health.image_size} images · ${health.device}`;
    $("draw-cfg").value = health.generate_defaults.cfg;
    $("draw-temperature").value = health.generate_defaults.temperature;
  } catch (err) {
    fail($("model"), `the server does not answer: ${err.message}`);
  }
  document.body.dataset.ready = "true"; // for the browser test: handlers are attached
});
