// The demo page: pick or drop an image (or a sample photo), mask it, show what the MAE
// makes of it. Talks to this server only: GET ready, GET v1/models and POST
// v1/reconstructions (multipart). Paths are relative so the page also works behind a
// path prefix.
"use strict";

(() => {
  const DEBOUNCE_MS = 250;
  const READY_POLL_MS = 1500;
  const SEED_HELP = "The seed must be a whole number, 0 or more (or empty for a random one).";
  const HEAT_SIZE = 256; // canvas pixels on the longer side of the patch grid
  // viridis at 0, .25, .5, .75, 1: dark = low error, yellow = high.
  const VIRIDIS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];

  const $ = (id) => document.getElementById(id);
  const el = {
    status: $("status"), dot: $("ready-dot"), modelId: $("model-id"),
    modelPicker: $("model-picker"), model: $("model"),
    file: $("file"), drop: $("drop"), fileName: $("file-name"), samples: $("samples"),
    ratio: $("mask-ratio"), ratioOut: $("mask-ratio-value"),
    seed: $("seed"), newSeed: $("new-seed"),
    keyForm: $("api-key-form"), key: $("api-key"),
    error: $("error"), results: $("results"),
    panels: {
      original: $("panel-original"), masked: $("panel-masked"),
      reconstruction: $("panel-reconstruction"), reconstruction_visible: $("panel-visible"),
    },
    heatmap: $("heatmap"), heatMin: $("heat-min"), heatMax: $("heat-max"),
    loss: $("loss"), hidden: $("hidden-count"), answerRatio: $("answer-ratio"),
    answerSeed: $("answer-seed"), answerModel: $("answer-model"), caption: $("caption"),
  };

  const state = {
    ready: false,
    models: [],
    apiKey: "",
    image: null, // {blob, name, sample}: the last image the server accepted
    waiting: null, // {blob, name, sample}: to send once the server is ready or has a key
    controller: null, // AbortController of the request in flight
    seq: 0, // number of the latest request; older answers are dropped
    timer: 0,
  };

  // -- messages ---------------------------------------------------------------------------
  function setStatus(text, kind) {
    el.status.textContent = text;
    el.dot.dataset.kind = kind;
  }

  function showError(text) {
    el.error.textContent = text;
    el.error.hidden = false;
  }

  function clearError() {
    el.error.hidden = true;
    el.error.textContent = "";
  }

  async function errorText(resp) {
    try {
      const body = await resp.json();
      if (body && body.error && body.error.message) return body.error.message;
    } catch (_) { /* not JSON: fall through */ }
    return `the server answered ${resp.status} ${resp.statusText}`.trim();
  }

  // -- talking to the server ----------------------------------------------------------------
  function api(path, options = {}) {
    const headers = new Headers(options.headers || {});
    headers.set("Accept", "application/json");
    if (state.apiKey) headers.set("Authorization", `Bearer ${state.apiKey}`);
    return fetch(path, { ...options, headers });
  }

  function needKey(message) {
    el.keyForm.hidden = false;
    showError(message);
    setStatus("An API key is needed", "warn");
    el.key.focus();
  }

  async function checkReady() {
    let resp;
    try {
      resp = await fetch("ready", { headers: { Accept: "application/json" } });
    } catch (err) {
      setStatus("Cannot reach the server; retrying…", "warn");
      setTimeout(checkReady, READY_POLL_MS * 2);
      return;
    }
    if (resp.ok) {
      await loadModels();
      return;
    }
    let code = "";
    let message = "";
    try {
      const body = await resp.json();
      code = body.error.code;
      message = body.error.message;
    } catch (_) { /* not our JSON */ }
    if (resp.status === 503 && code === "load_failed") {
      setStatus("Not ready: the model failed to load", "bad");
      showError(`The server cannot serve: ${message}`);
      return;
    }
    setStatus("Not ready yet: the model is loading…", "warn");
    setTimeout(checkReady, READY_POLL_MS);
  }

  async function loadModels() {
    let resp;
    try {
      resp = await api("v1/models");
    } catch (err) {
      setStatus("Cannot reach the server", "bad");
      return;
    }
    if (resp.status === 401) {
      needKey(`This server needs an API key: ${await errorText(resp)}`);
      return;
    }
    if (resp.status === 503) {
      setTimeout(checkReady, READY_POLL_MS);
      return;
    }
    if (!resp.ok) {
      showError(`Could not list the models: ${await errorText(resp)}`);
      return;
    }
    state.models = (await resp.json()).data;
    state.ready = true;
    el.keyForm.hidden = true;
    showModels();
    setStatus("Ready", "ok");
    const next = state.waiting || state.image;
    hold(null);
    if (next) reconstruct(next);
  }

  function showModels() {
    el.model.replaceChildren(...state.models.map((m) => new Option(m.id, m.id)));
    el.modelPicker.hidden = state.models.length < 2;
    el.modelId.hidden = state.models.length > 1;
    showModel(currentModel());
  }

  function currentModel() {
    return state.models.find((m) => m.id === el.model.value) || state.models[0];
  }

  function showModel(m) {
    if (!m) return;
    const heads = m.heads.includes("decoder") ? "" : " · encoder only: cannot reconstruct";
    el.modelId.textContent = `${m.id} · ${m.image_size} px, patch ${m.patch_size}${heads}`;
    for (const img of Object.values(el.panels)) {
      img.width = m.image_size;
      img.height = m.image_size;
    }
  }

  // -- the reconstruction ----------------------------------------------------------------
  function seedValue() {
    const text = el.seed.value.trim();
    if (text === "") return { ok: true, seed: null };
    const seed = Number(text);
    const ok = Number.isSafeInteger(seed) && seed >= 0;
    return { ok, seed: ok ? seed : null };
  }

  function schedule(delay = DEBOUNCE_MS) {
    clearTimeout(state.timer);
    state.timer = setTimeout(() => {
      if (state.image) reconstruct(state.image);
    }, delay);
  }

  // The image to send once the server is ready or has a key (null: none). The page says
  // which on #results[data-waiting], for people and tests alike.
  function hold(image) {
    state.waiting = image;
    if (image) el.results.dataset.waiting = image.name;
    else delete el.results.dataset.waiting;
  }

  async function reconstruct(image) {
    clearTimeout(state.timer);
    if (!state.ready) {
      hold(image);
      return;
    }
    const { ok, seed } = seedValue();
    if (!ok) {
      showError(SEED_HELP);
      return;
    }
    const form = new FormData();
    form.append("file", image.blob, image.name);
    form.append("mask_ratio", el.ratio.value);
    if (seed !== null) form.append("seed", String(seed));
    if (state.models.length > 1) form.append("model", el.model.value);

    if (state.controller) state.controller.abort();
    const controller = new AbortController();
    state.controller = controller;
    const seq = ++state.seq;
    el.results.setAttribute("aria-busy", "true");
    el.results.dataset.state = "loading";

    let resp;
    try {
      resp = await api("v1/reconstructions", {
        method: "POST", body: form, signal: controller.signal,
      });
    } catch (err) {
      if (err.name === "AbortError") return; // a newer request replaced this one
      finish(seq, "error");
      showError(`Cannot reach the server: ${err.message}`);
      return;
    }
    if (seq !== state.seq) return;
    if (resp.status === 401) {
      state.ready = false;
      hold(image);
      finish(seq, "error");
      needKey(`This server needs an API key: ${await errorText(resp)}`);
      return;
    }
    if (!resp.ok) {
      const text = await errorText(resp);
      if (seq !== state.seq) return;
      finish(seq, "error");
      showError(text); // the server's messages name the file when it is the problem
      return;
    }
    const answer = await resp.json();
    if (seq !== state.seq) return;
    state.image = image;
    el.fileName.textContent = image.name;
    for (const b of el.samples.querySelectorAll("button")) {
      b.setAttribute("aria-pressed", String(b.dataset.file === image.sample));
    }
    clearError();
    if (await render(answer, seq)) finish(seq, "done");
  }

  function finish(seq, result) {
    if (seq !== state.seq) return;
    state.controller = null;
    el.results.setAttribute("aria-busy", "false");
    el.results.dataset.state = result;
  }

  // Shows an answer; false when a newer request took over while its pictures decoded.
  async function render(answer, seq) {
    const grid = answer.mask;
    const total = grid.length * grid[0].length;
    const hidden = grid.flat().reduce((a, b) => a + b, 0);
    const size = currentModel() ? currentModel().image_size : "";
    const alts = {
      original: `Original image, centre square at ${size} px`,
      masked: `Masked input: ${hidden} of ${total} patches hidden in grey`,
      reconstruction: "Reconstruction: every patch as the decoder predicts it",
      reconstruction_visible: "Reconstruction with the visible patches' original pixels pasted back",
    };
    const loads = [];
    for (const [key, img] of Object.entries(el.panels)) {
      img.src = `data:image/png;base64,${answer.panels[key]}`;
      img.alt = alts[key];
      loads.push(img.decode().catch(() => undefined));
    }
    await Promise.all(loads);
    if (seq !== state.seq) return false;

    el.loss.textContent = answer.loss.toFixed(4);
    el.hidden.textContent = `${hidden} of ${total} patches`;
    el.answerRatio.textContent = String(answer.mask_ratio);
    el.answerSeed.textContent = String(answer.seed);
    el.answerModel.textContent = answer.model;
    el.caption.textContent = answer.caption;
    // A random seed chosen by the server goes into the field: the next request reuses it.
    if (el.seed.value.trim() === "") el.seed.value = String(answer.seed);
    drawHeatmap(answer.mask, answer.patch_error);
    return true;
  }

  function viridis(t) {
    const x = Math.min(1, Math.max(0, t)) * (VIRIDIS.length - 1);
    const i = Math.min(VIRIDIS.length - 2, Math.floor(x));
    const f = x - i;
    const c = VIRIDIS[i].map((v, k) => Math.round(v + f * (VIRIDIS[i + 1][k] - v)));
    return `rgb(${c[0]}, ${c[1]}, ${c[2]})`;
  }

  // Hidden patches coloured by their error; visible ones (not in the loss) show the
  // original image dimmed, for orientation.
  function drawHeatmap(mask, error) {
    const rows = mask.length;
    const cols = mask[0].length;
    const cell = Math.max(4, Math.floor(HEAT_SIZE / Math.max(rows, cols)));
    const canvas = el.heatmap;
    canvas.width = cols * cell;
    canvas.height = rows * cell;
    const ctx = canvas.getContext("2d");
    ctx.imageSmoothingEnabled = false;
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.drawImage(el.panels.original, 0, 0, canvas.width, canvas.height);
    ctx.fillStyle = "rgba(255, 255, 255, 0.7)";
    ctx.fillRect(0, 0, canvas.width, canvas.height);

    // The colour scale spans the hidden patches' errors on this image: lowest to highest.
    let min = Infinity;
    let max = -Infinity;
    let worst = null;
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < cols; c++) {
        if (!mask[r][c]) continue;
        min = Math.min(min, error[r][c]);
        if (error[r][c] >= max) {
          max = error[r][c];
          worst = [r, c];
        }
      }
    }
    const span = max - min;
    ctx.strokeStyle = "rgba(255, 255, 255, 0.8)";
    ctx.lineWidth = 1;
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < cols; c++) {
        if (!mask[r][c]) continue;
        ctx.fillStyle = viridis(span > 0 ? (error[r][c] - min) / span : 1);
        ctx.fillRect(c * cell, r * cell, cell, cell);
        ctx.strokeRect(c * cell + 0.5, r * cell + 0.5, cell - 1, cell - 1);
      }
    }
    el.heatMin.textContent = worst ? min.toPrecision(3) : "–";
    el.heatMax.textContent = worst ? max.toPrecision(3) : "–";
    const where = worst
      ? `; from ${min.toPrecision(3)} to ${max.toPrecision(3)}, highest at row ${worst[0] + 1}, column ${worst[1] + 1}`
      : "";
    canvas.setAttribute(
      "aria-label",
      `Heat map of the error of the hidden patches on the ${rows} by ${cols} patch grid${where}`,
    );
  }

  // -- choosing an image -----------------------------------------------------------------
  // `sample`: the sample photo's file name, when the image is one.
  function choose(blob, name, sample = null) {
    // While the key prompt is up its message stays: the image waits for the key.
    if (el.keyForm.hidden) clearError();
    reconstruct({ blob, name, sample });
  }

  async function loadSamples() {
    let list;
    try {
      const resp = await fetch("static/samples/index.json");
      if (!resp.ok) return;
      list = await resp.json();
    } catch (_) {
      return;
    }
    for (const sample of list) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "sample";
      button.dataset.file = sample.file;
      button.setAttribute("aria-pressed", "false");
      button.title = sample.alt;
      const img = document.createElement("img");
      img.src = `static/samples/${sample.file}`;
      img.alt = sample.alt;
      button.append(img);
      button.addEventListener("click", async () => {
        try {
          const resp = await fetch(img.src);
          if (!resp.ok) throw new Error(`${resp.status} ${resp.statusText}`);
          choose(await resp.blob(), sample.file, sample.file);
        } catch (err) {
          showError(`Could not load the sample ${sample.file}: ${err.message}`);
        }
      });
      el.samples.append(button);
    }
  }

  // -- wiring ----------------------------------------------------------------------------
  el.file.addEventListener("change", () => {
    const file = el.file.files[0];
    el.file.value = ""; // choosing the same file again still fires "change"
    if (file) choose(file, file.name);
  });

  for (const name of ["dragenter", "dragover"]) {
    el.drop.addEventListener(name, (ev) => {
      ev.preventDefault();
      el.drop.classList.add("over");
    });
  }
  el.drop.addEventListener("dragleave", () => el.drop.classList.remove("over"));
  el.drop.addEventListener("drop", (ev) => {
    ev.preventDefault();
    el.drop.classList.remove("over");
    const file = ev.dataTransfer && ev.dataTransfer.files[0];
    if (file) choose(file, file.name);
  });
  // A file dropped next to the zone must not make the browser leave the page.
  window.addEventListener("dragover", (ev) => ev.preventDefault());
  window.addEventListener("drop", (ev) => ev.preventDefault());

  el.ratio.addEventListener("input", () => {
    el.ratioOut.textContent = Number(el.ratio.value).toFixed(2);
    schedule();
  });
  el.seed.addEventListener("input", () => {
    if (seedValue().ok) schedule();
    else showError(SEED_HELP);
  });
  el.newSeed.addEventListener("click", () => {
    el.seed.value = String(Math.floor(Math.random() * 2 ** 31));
    schedule(0);
  });
  el.model.addEventListener("change", () => {
    showModel(currentModel());
    schedule(0);
  });
  el.keyForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    state.apiKey = el.key.value.trim();
    clearError();
    setStatus("Checking the key…", "warn");
    if (state.image && !state.waiting) hold(state.image);
    loadModels();
  });

  el.ratioOut.textContent = Number(el.ratio.value).toFixed(2);
  loadSamples();
  checkReady();
})();
