// The raygen playground: one panel per served model, each talking to this server's /v1 routes.
// No framework and nothing from the internet: the page must work on an offline cluster.
"use strict";

const KEY_STORE = "raygen-api-key"; // sessionStorage: this tab only, gone when it closes

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// ------------------------------------------------------------------ talking to the API

function authHeaders(extra = {}) {
  const key = sessionStorage.getItem(KEY_STORE);
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

async function errorOf(response) {
  // Every refusal of the API is OpenAI's {"error": {"message": ...}}: show its own words.
  let message = `the server answered ${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) message = body.error.message;
  } catch (_) { /* not JSON: keep the status line */ }
  return new ApiError(response.status, message);
}

async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, { ...options, headers: authHeaders(options.headers) });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(0, `could not reach the server (${e.message})`);
  }
  if (!response.ok) {
    const error = await errorOf(response);
    if (error.status === 401) askForKey(error.message);
    throw error;
  }
  return response;
}

function postJson(path, body, signal) {
  return api(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body), signal });
}

// Server-sent events of a streamed completion: yields each `data:` JSON, stops at `data: [DONE]`.
async function* events(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice("data: ".length);
        if (data === "[DONE]") return;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new ApiError(500, chunk.error.message); // a failure after the stream began
        yield chunk;
      }
    }
  }
}

// ------------------------------------------------------------------ small helpers

const $ = (root, selector) => root.querySelector(selector);

function numberOr(input, fallback) {
  // An empty field is the API's default; anything else goes as typed, so the API judges it.
  return input.value.trim() === "" ? fallback : Number(input.value);
}

function randomSeed() {
  return Math.floor(Math.random() * 2 ** 31);
}

function pngUrl(b64) {
  return `data:image/png;base64,${b64}`;
}

function bytesOf(b64) {
  return Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
}

function busy(panel, text) {
  $(panel, ".error").textContent = "";
  $(panel, ".state").textContent = text;
  $(panel, "button[type=submit]").disabled = true;
}

function idle(panel, text) {
  $(panel, ".state").textContent = text;
  $(panel, "button[type=submit]").disabled = false;
}

function failed(panel, error) {
  idle(panel, "");
  $(panel, ".error").textContent = error.status ? `Error ${error.status}: ${error.message}` : `Error: ${error.message}`;
}

// ------------------------------------------------------------------ the panels, by the model's kind

function newPanel(model) {
  const template = document.getElementById(`panel-${model.raygen.kind}`);
  if (!template) return null;
  const panel = template.content.firstElementChild.cloneNode(true);
  panel.dataset.model = model.id;
  panel.dataset.kind = model.raygen.kind;
  panel.setAttribute("aria-labelledby", `title-${model.id}`);
  $(panel, "h2").id = `title-${model.id}`;
  $(panel, "h2").textContent = model.id;
  for (const field of panel.querySelectorAll(".field")) {
    const control = field.querySelector("input, select, textarea");
    control.id = `${model.id}-${control.name}`;
    field.querySelector("label").htmlFor = control.id;
  }
  return panel;
}

const PANELS = {
  image(panel, model) {
    const info = model.raygen;
    const limits = info.limits;
    $(panel, ".about").textContent = `${info.family}: ${info.image_size}×${info.image_size} px` +
      (info.num_classes ? `, ${info.num_classes} classes` : "") + `; at most ${limits.max_n} images a request.`;
    const form = $(panel, "form");
    form.n.value = Math.min(8, limits.max_n);
    if (info.num_classes) {
      for (let label = 0; label < info.num_classes; label++) form.label.add(new Option(String(label), String(label)));
    } else {
      $(panel, ".conditional").remove();
    }
    const bodyOf = () => {
      const body = { model: model.id, n: numberOr(form.n, 1), seed: numberOr(form.seed, randomSeed()) };
      if (form.label && form.label.value !== "") body.label = Number(form.label.value);
      return body;
    };
    offerToBatch(panel, model, "/v1/images/generations", bodyOf);
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const body = bodyOf();
      busy(panel, "generating…");
      try {
        const answer = await (await postJson("v1/images/generations", body)).json();
        const grid = $(panel, ".results");
        grid.replaceChildren(...answer.data.map((image) => imageFigure(model.id, image)));
        idle(panel, `${answer.data.length} images, seeds ${body.seed}–${body.seed + answer.data.length - 1}`);
      } catch (error) {
        failed(panel, error);
      }
    });
  },

  text(panel, model) {
    const info = model.raygen;
    $(panel, ".about").textContent = `${info.family}: context ${info.context_length} tokens; ` +
      `at most ${info.limits.max_tokens} new tokens a request. Streams from /v1/completions.`;
    const form = $(panel, "form");
    const stop = $(panel, ".stop");
    form.max_tokens.value = Math.min(info.default_max_tokens, info.limits.max_tokens);
    form.temperature.value = info.default_temperature;  // the recipe's, as the API uses when none is sent
    let controller = null;
    stop.addEventListener("click", () => controller && controller.abort());
    const bodyOf = () => ({
      model: model.id, prompt: form.prompt.value, max_tokens: numberOr(form.max_tokens, undefined),
      temperature: numberOr(form.temperature, undefined), seed: numberOr(form.seed, randomSeed()),
    });
    offerToBatch(panel, model, "/v1/completions", bodyOf);
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const body = { ...bodyOf(), stream: true };
      const generated = $(panel, ".generated");
      $(panel, ".echo").textContent = "";
      generated.textContent = "";
      controller = new AbortController();
      busy(panel, "waiting for the first token…");
      stop.disabled = false;
      let chunks = 0;
      let reason = null;
      try {
        const response = await postJson("v1/completions", body, controller.signal);
        $(panel, ".echo").textContent = body.prompt;
        $(panel, ".state").textContent = "streaming…";
        for await (const chunk of events(response)) {
          for (const choice of chunk.choices) {
            generated.textContent += choice.text;
            chunks += 1;
            reason = choice.finish_reason || reason;
          }
        }
        idle(panel, `done: finish reason ${reason}, ${chunks} chunks, seed ${body.seed}`);
      } catch (error) {
        if (error.name === "AbortError") idle(panel, `stopped after ${chunks} chunks`);
        else failed(panel, error);
      } finally {
        stop.disabled = true;
        controller = null;
      }
    });
  },

  music(panel, model) {
    const info = model.raygen;
    $(panel, ".about").textContent = `${info.family}: symbolic music, rendered at ${info.sample_rate} Hz; ` +
      `context ${info.context_tokens} tokens (about 2.5 tokens a note).`;
    const form = $(panel, "form");
    form.max_tokens.value = Math.min(info.default_max_tokens, info.limits.max_tokens);
    let audioUrl = null;
    const bodyOf = () => ({ model: model.id, seed: numberOr(form.seed, randomSeed()), max_tokens: numberOr(form.max_tokens, undefined) });
    offerToBatch(panel, model, "/v1/music/generations", bodyOf);
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      // One seed for both requests, so the sound, the roll and the MIDI file are the same piece.
      const body = bodyOf();
      busy(panel, "composing…");
      try {
        const [midi, wav] = await Promise.all(["midi", "wav"].map(async (format) =>
          (await (await postJson("v1/music/generations", { ...body, response_format: format })).json()).data[0]));
        const results = $(panel, ".results");
        if (audioUrl) URL.revokeObjectURL(audioUrl);
        audioUrl = URL.createObjectURL(new Blob([bytesOf(wav.b64_json)], { type: "audio/wav" }));
        $(results, "audio").src = audioUrl;
        const download = $(results, ".download");
        download.href = `data:audio/midi;base64,${midi.b64_json}`;
        download.download = `${model.id}-seed-${body.seed}.mid`;
        $(results, ".facts").textContent = `${midi.num_notes} notes, ${midi.duration_s.toFixed(1)} s, ` +
          `key ${midi.key || "none"}, seed ${body.seed}`;
        results.hidden = false;
        drawPianoRoll($(results, "canvas"), midiNotes(bytesOf(midi.b64_json)));
        idle(panel, `done (finish reason ${midi.finish_reason})`);
      } catch (error) {
        failed(panel, error);
      }
    });
  },

  image_edit(panel, model) {
    const info = model.raygen;
    $(panel, ".about").textContent = `${info.family}: ${info.styles.length} styles; ` +
      `inputs above ${info.max_pixels.toLocaleString()} pixels are shrunk first.`;
    const form = $(panel, "form");
    for (const name of info.styles) form.prompt.add(new Option(name, name));
    let beforeUrl = null;
    // A batch line holds OpenAI's JSON edit body: the chosen picture inline, as a data URL.
    offerToBatch(panel, model, "/v1/images/edits", async () => {
      const file = form.image.files[0];
      if (!file) throw new Error("choose an image first");
      return { model: model.id, prompt: form.prompt.value, images: [{ image_url: await dataUrlOf(file) }] };
    });
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const file = form.image.files[0];
      const data = new FormData();
      data.append("model", model.id);
      data.append("prompt", form.prompt.value);
      if (file) data.append("image", file);
      busy(panel, "stylising…");
      try {
        const answer = await (await api("v1/images/edits", { method: "POST", body: data })).json();
        const results = $(panel, ".results");
        if (beforeUrl) URL.revokeObjectURL(beforeUrl);
        beforeUrl = URL.createObjectURL(file);
        $(results, ".before").src = beforeUrl;
        $(results, ".after").src = pngUrl(answer.data[0].b64_json);
        $(results, ".after-caption").textContent = `after: ${answer.data[0].style_name}`;
        results.hidden = false;
        idle(panel, "done");
      } catch (error) {
        failed(panel, error);
      }
    });
  },
};

function dataUrlOf(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(new Error(`${file.name} could not be read`));
    reader.readAsDataURL(file);
  });
}

function imageFigure(modelId, image) {
  const figure = document.createElement("figure");
  const img = document.createElement("img");
  const what = image.label === undefined || image.label === null ? "" : `, label ${image.label}`;
  img.src = pngUrl(image.b64_json);
  img.alt = `sample with seed ${image.seed}${what}`;
  const caption = document.createElement("figcaption");
  const link = document.createElement("a");
  link.href = img.src;
  link.download = `${modelId}-seed-${image.seed}.png`;
  link.textContent = "PNG";
  link.setAttribute("aria-label", `download the PNG of seed ${image.seed}`);
  caption.append(`seed ${image.seed}${what} `, link);
  figure.append(img, caption);
  return figure;
}

// ------------------------------------------------------------------ music: MIDI notes and the piano roll

// The notes of a standard MIDI file as [{pitch, start, end}] in ticks: just enough to draw them.
function midiNotes(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const tag = (at) => String.fromCharCode(...bytes.subarray(at, at + 4));
  if (tag(0) !== "MThd") throw new ApiError(0, "the answer is not a MIDI file");
  const numTracks = view.getUint16(10);
  let pos = 8 + view.getUint32(4);
  const notes = [];
  const varint = () => {
    let value = 0;
    let byte;
    do { byte = bytes[pos++]; value = (value << 7) | (byte & 0x7f); } while (byte & 0x80);
    return value;
  };
  for (let track = 0; track < numTracks && pos + 8 <= bytes.length; track++) {
    const end = pos + 8 + view.getUint32(pos + 4);
    const isTrack = tag(pos) === "MTrk";
    pos += 8;
    let tick = 0;
    let status = 0;
    const sounding = new Map(); // "channel:pitch" -> start ticks of its notes still sounding, oldest first
    while (isTrack && pos < end) {
      tick += varint();
      if (bytes[pos] & 0x80) status = bytes[pos++]; // else: running status
      const kind = status & 0xf0;
      if (status === 0xff || status === 0xf0 || status === 0xf7) {
        if (status === 0xff) pos++; // a meta event's type
        const length = varint(); // read first: `pos += varint()` would add to the old pos
        pos += length;
      }
      else if (kind === 0x90 || kind === 0x80) {
        const pitch = bytes[pos++];
        const velocity = bytes[pos++];
        const key = `${status & 0x0f}:${pitch}`;
        if (!sounding.has(key)) sounding.set(key, []);
        if (kind === 0x90 && velocity > 0) sounding.get(key).push(tick);
        else if (sounding.get(key).length) notes.push({ pitch, start: sounding.get(key).shift(), end: tick });
      } else pos += kind === 0xc0 || kind === 0xd0 ? 1 : 2;
    }
    pos = end;
  }
  return notes;
}

function drawPianoRoll(canvas, notes) {
  canvas.setAttribute("aria-label", `piano roll of ${notes.length} notes`);
  const context = canvas.getContext("2d");
  context.fillStyle = "#f4f1ea";
  context.fillRect(0, 0, canvas.width, canvas.height);
  if (notes.length === 0) return;
  const low = Math.min(...notes.map((n) => n.pitch)) - 1;
  const high = Math.max(...notes.map((n) => n.pitch)) + 1;
  const last = Math.max(...notes.map((n) => n.end)) || 1;
  const rowHeight = canvas.height / (high - low + 1);
  context.fillStyle = "#2b5d8a";
  for (const note of notes) {
    const x = (note.start / last) * canvas.width;
    const width = Math.max(1, ((note.end - note.start) / last) * canvas.width - 1);
    context.fillRect(x, (high - note.pitch) * rowHeight, width, Math.max(1, rowHeight - 1));
  }
}

// ------------------------------------------------------------------ batches: a file of requests run as one job

const BATCH_POLL_MS = 2000;
const BATCH_RUNNING = ["validating", "in_progress", "finalizing", "cancelling"];
// The batch endpoints of each kind of model (a batch names one endpoint and one model).
const KIND_ENDPOINTS = {
  image: ["/v1/images/generations"], text: ["/v1/completions", "/v1/chat/completions"], music: ["/v1/music/generations"],
  image_edit: ["/v1/images/edits"],
};
const draft = { model: null, url: null, lines: [] }; // the requests added with "Add to batch"
let batchPoller = null;

function batchesPanel() {
  return document.getElementById("batches");
}

// A model panel's "Add to batch": its form's request, as the panel would send it, becomes a line of the draft.
function offerToBatch(panel, model, url, bodyOf) {
  $(panel, ".add-to-batch").addEventListener("click", async () => {
    let body;
    try {
      body = await bodyOf();
    } catch (error) {
      failed(panel, error);
      return;
    }
    $(panel, ".error").textContent = "";
    const note = draft.model && draft.model !== model.id
      ? `A batch runs one model: the draft now holds ${model.id}'s requests instead of ${draft.model}'s. ` : "";
    if (note) draft.lines = [];
    draft.model = model.id;
    draft.url = url;
    draft.lines.push({ custom_id: `${model.id}-${draft.lines.length + 1}`, method: "POST", url, body });
    showDraft(note);
  });
}

function showDraft(note = "") {
  const section = batchesPanel();
  const count = draft.lines.length;
  $(section, ".draft").textContent = count
    ? `${note}Draft: ${count} request${count === 1 ? "" : "s"} to ${draft.model} (${draft.url}).`
    : "No requests in the draft yet.";
  $(section, ".submit-draft").disabled = count === 0;
  $(section, ".clear-draft").disabled = count === 0;
}

async function submitBatch(file, endpoint) {
  const section = batchesPanel();
  busy(section, "uploading the file…");
  $(section, ".submit-draft").disabled = true; // (one submission at a time; showDraft enables it again)
  try {
    const upload = new FormData();
    upload.append("purpose", "batch");
    upload.append("file", file);
    const uploaded = await (await api("v1/files", { method: "POST", body: upload })).json();
    $(section, ".state").textContent = `${uploaded.filename}: ${uploaded.lines} lines; starting the batch…`;
    const batch = await (await postJson("v1/batches", {
      input_file_id: uploaded.id, endpoint, completion_window: "24h",
    })).json();
    idle(section, `batch ${batch.id} submitted (${uploaded.lines} request${uploaded.lines === 1 ? "" : "s"})`);
    await refreshBatches();
    return true;
  } catch (error) {
    failed(section, error);
    return false;
  }
}

function requestsOf(batch) {
  const counts = batch.request_counts || { total: 0, completed: 0, failed: 0 };
  return `${counts.completed} of ${counts.total} answered` +
    (counts.failed ? `, ${counts.failed} error${counts.failed === 1 ? "" : "s"}` : "");
}

function statusOf(batch) {
  const errors = batch.errors && batch.errors.data && batch.errors.data.length
    ? `: ${batch.errors.data.slice(0, 3).map((e) => (e.line ? `line ${e.line}: ` : "") + e.message).join("; ")}`
    : "";
  return batch.status + errors;
}

// A button of the batch list; what goes wrong in its action is said in the Batches panel.
function batchButton(text, action) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "secondary";
  button.textContent = text;
  button.addEventListener("click", async () => {
    try {
      await action();
    } catch (error) {
      failed(batchesPanel(), error);
    }
  });
  return button;
}

// A file of the Files API, downloaded with the API key (a plain link could not send it).
function downloadButton(fileId, name, text) {
  return batchButton(text, async () => {
    const blob = await (await api(`v1/files/${fileId}/content`)).blob();
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = name;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 60000);
  });
}

function batchRow(batch) {
  const row = document.createElement("tr");
  row.dataset.batch = batch.id;
  const cells = [batch.id, batch.model || "", statusOf(batch), requestsOf(batch)].map((text) => {
    const cell = document.createElement("td");
    cell.textContent = text;
    return cell;
  });
  cells[2].className = "batch-status";
  const files = document.createElement("td");
  if (batch.output_file_id) files.append(downloadButton(batch.output_file_id, `${batch.id}_output.jsonl`, "Output"));
  if (batch.error_file_id) files.append(downloadButton(batch.error_file_id, `${batch.id}_error.jsonl`, "Errors"));
  if (BATCH_RUNNING.includes(batch.status) && batch.status !== "cancelling") {
    files.append(batchButton("Cancel", async () => {
      await api(`v1/batches/${batch.id}/cancel`, { method: "POST" });
      await refreshBatches();
    }));
  }
  row.append(...cells, files);
  return row;
}

// The batch list (GET /v1/batches), polled while any batch runs.
async function refreshBatches() {
  clearTimeout(batchPoller);
  const section = batchesPanel();
  let batches;
  try {
    batches = (await (await api("v1/batches?limit=20")).json()).data;
  } catch (error) {
    failed(section, error);
    return;
  }
  $(section, "tbody").replaceChildren(...batches.map(batchRow));
  $(section, ".batch-list").hidden = batches.length === 0;
  if (batches.some((b) => BATCH_RUNNING.includes(b.status))) batchPoller = setTimeout(refreshBatches, BATCH_POLL_MS);
}

function setUpBatches(models) {
  const section = batchesPanel();
  const form = $(section, "form");
  const endpoints = [...new Set(models.flatMap((m) => KIND_ENDPOINTS[m.raygen.kind] || []))];
  form.endpoint.replaceChildren(...endpoints.map((url) => new Option(url, url)));
  if (!section.dataset.ready) {
    section.dataset.ready = "yes"; // (a second model list, after a new key, must not add the handlers twice)
    $(section, ".submit-draft").addEventListener("click", async () => {
      const file = new File([draft.lines.map((line) => JSON.stringify(line) + "\n").join("")], "playground-batch.jsonl",
        { type: "application/jsonl" });
      if (await submitBatch(file, draft.url)) draft.lines = [];
      showDraft();
    });
    $(section, ".clear-draft").addEventListener("click", () => {
      draft.lines = [];
      showDraft();
    });
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const file = form.file.files[0];
      if (!file) {
        failed(section, new ApiError(0, "choose a JSONL file of requests first"));
        return;
      }
      if (await submitBatch(file, form.endpoint.value)) form.file.value = "";
      showDraft();
    });
  }
  section.hidden = endpoints.length === 0;
  showDraft();
  refreshBatches();
}

// ------------------------------------------------------------------ the API key and the model list

function askForKey(message) {
  const form = document.getElementById("key-form");
  form.hidden = false;
  $(form, ".error").textContent = sessionStorage.getItem(KEY_STORE) ? message : "";
  document.getElementById("status").textContent = "This server needs an API key.";
  form.key.focus();
}

const MODELS_WAIT_MS = 15000; // a list slower than this: its replicas are likely still starting
const MODELS_RETRY_MS = 5000;
const MODELS_TRIES = 60; // five minutes of retries, then the page stops asking

async function loadModels(attempt = 1) {
  const status = document.getElementById("status");
  const timeout = new AbortController();
  const timer = setTimeout(() => timeout.abort(), MODELS_WAIT_MS);
  let models;
  try {
    models = (await (await api("v1/models", { signal: timeout.signal })).json()).data;
  } catch (error) {
    if (error.status === 401) return; // the key form is shown
    const why = error.name === "AbortError"
      ? `the server has not listed its models within ${MODELS_WAIT_MS / 1000} s: their replicas may still be ` +
        "starting (raygen serve prints a line when they are ready, or says why they cannot start)"
      : error.message;
    if (attempt < MODELS_TRIES) {
      status.textContent = `Could not list the models: ${why}. Trying again in ${MODELS_RETRY_MS / 1000} s…`;
      setTimeout(() => loadModels(attempt + 1), MODELS_RETRY_MS);
    } else {
      status.textContent = `Could not list the models: ${why}. Reload the page to try again.`;
    }
    return;
  } finally {
    clearTimeout(timer);
  }
  document.getElementById("key-form").hidden = true;
  const panels = [];
  for (const model of models) {
    const panel = newPanel(model);
    if (!panel) continue; // a kind this page has no panel for
    PANELS[model.raygen.kind](panel, model);
    panels.push(panel);
  }
  document.getElementById("panels").replaceChildren(...panels);
  setUpBatches(models);
  status.textContent = `${panels.length} models: ${models.map((m) => m.id).join(", ")}`;
}

document.getElementById("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY_STORE, event.target.key.value.trim());
  loadModels();
});

loadModels();
