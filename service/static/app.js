// The demo page: pick or drop an image (or a sample photo), mask it, show what the MAE
// makes of it and the image's embedding. Talks to this server only: GET ready, GET
// v1/models, POST v1/reconstructions (multipart) and POST v1/embeddings (JSON). Paths are
// relative so the page also works behind a path prefix.
"use strict";

(() => {
  const DEBOUNCE_MS = 250;
  const READY_POLL_MS = 1500;
  const SEED_HELP = "The seed must be a whole number, 0 or more (or empty for a random one).";
  const HEAT_SIZE = 256; // canvas pixels on the longer side of the patch grid
  // viridis at 0, .25, .5, .75, 1: dark = low error, yellow = high.
  const VIRIDIS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
  const STRIP_WIDTH = 768; // canvas pixels of the embedding strip (at least one per number)
  const STRIP_UP = "rgb(37, 99, 235)"; // positive numbers
  const STRIP_DOWN = "rgb(234, 88, 12)"; // negative numbers
  const GRID_RATIO = "0.75"; // grid masking keeps one patch of every 2x2 cell
  // What each mask strategy hides, under its picker: why random masking leaves a harder
  // task than a grid (compare their losses and error maps on one image and seed).
  const STRATEGY_HELP = {
    random: "Patches hidden at random, as in the paper: at 0.75 most hidden patches have few "
      + "visible neighbours, so the model has to make sense of the image rather than copy "
      + "what is next door.",
    block: "Rectangles of neighbouring patches hidden (BEiT's block-wise masking): whole "
      + "regions go missing, a harder task still; the paper found its reconstructions "
      + "blurrier at 0.75.",
    grid: "One patch kept in every 2×2 cell: each hidden patch touches a visible one, so "
      + "filling it in is mostly interpolation. An easier task than random at the same ratio "
      + "(usually a lower loss and a sharper picture), and one the paper found teaches the "
      + "encoder less.",
    centre: "A square in the middle hidden, the border kept: the classic inpainting task "
      + "(not in the MAE paper), for comparison.",
  };
  // The masked panel's caption for each strategy ("grey" and "visible" stay in every one).
  const STRATEGY_CAPTION = {
    random: "hidden at random",
    block: "hidden in rectangles (block masking)",
    grid: "hidden on a regular grid (grid masking: one patch kept per 2×2 cell)",
    centre: "hidden in a square in the middle (centre masking)",
  };

  const $ = (id) => document.getElementById(id);
  const el = {
    status: $("status"), dot: $("ready-dot"), modelId: $("model-id"),
    modelPicker: $("model-picker"), model: $("model"),
    file: $("file"), drop: $("drop"), fileName: $("file-name"), samples: $("samples"),
    ratio: $("mask-ratio"), ratioOut: $("mask-ratio-value"), ratioFixed: $("mask-ratio-fixed"),
    strategy: $("mask-strategy"), strategyHelp: $("mask-strategy-help"),
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
    answerStrategy: $("answer-strategy"), maskedCaption: $("caption-masked-text"),
    embedding: $("embedding"), embeddingOf: $("embedding-of"), pooling: $("pooling"),
    embeddingError: $("embedding-error"), strip: $("embedding-strip"),
    embeddingDim: $("embedding-dim"), embeddingNorm: $("embedding-norm"),
    embeddingPooling: $("embedding-pooling"), embeddingRange: $("embedding-range"),
    copy: $("embedding-copy"), copied: $("embedding-copied"),
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
    images: 0, // images chosen so far: each gets a number, its `id`
    ratioBeforeGrid: null, // the slider's value when grid masking pinned it to GRID_RATIO
  };

  // The embedding is fetched once per image, model and pooling (not per mask ratio or
  // seed, which do not change it), with its own request, sequence and failure.
  const embedding = {
    key: "", // image id, model and pooling of the last request (the shown vector's, when done)
    controller: null,
    seq: 0,
    image: null, // the image of the last request
    vector: null, // the numbers shown, for the copy button
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
    // Grid masking needs an even patch grid: a model on an odd one cannot take it.
    const side = m.image_size / m.patch_size;
    const grid = el.strategy.querySelector("option[value='grid']");
    grid.disabled = side % 2 !== 0;
    if (grid.disabled && el.strategy.value === "grid") {
      el.strategy.value = "random";
      showStrategy();
    }
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
    ensureEmbedding(image);
    const form = new FormData();
    form.append("file", image.blob, image.name);
    form.append("mask_ratio", el.ratio.value);
    form.append("mask_strategy", el.strategy.value);
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
    const strategy = answer.mask_strategy || "random";
    const how = STRATEGY_CAPTION[strategy] || `hidden by ${strategy} masking`;
    const alts = {
      original: `Original image, centre square at ${size} px`,
      masked: `Masked input: ${hidden} of ${total} patches ${how}, in grey`,
      reconstruction: "The model's prediction of every patch; the visible patches, which "
        + "are not trained, look like noise",
      reconstruction_visible: "The prediction in the hidden patches with the original pixels "
        + "pasted back into the visible ones",
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
    el.answerStrategy.textContent = strategy;
    el.maskedCaption.textContent = `Patches ${how}, in grey: the encoder sees only the `
      + "visible ones.";
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

  // -- the embedding ---------------------------------------------------------------------
  function embeddingKey(image) {
    const model = state.models.length > 1 ? el.model.value : "";
    return `${image.id}|${model}|${el.pooling.value}`;
  }

  // Called whenever an image is sent for reconstruction: fetches its embedding unless the
  // last request was for this very image, model and pooling (a failure is not retried
  // until one of them changes).
  function ensureEmbedding(image) {
    if (embedding.key !== embeddingKey(image)) embed(image);
  }

  function setEmbeddingState(result) {
    el.embedding.dataset.state = result;
    el.embedding.setAttribute("aria-busy", String(result === "loading"));
  }

  function embeddingFailed(text) {
    embedding.vector = null;
    el.copy.disabled = true;
    el.copied.textContent = "";
    el.embeddingError.textContent = `No embedding: ${text}`;
    el.embeddingError.hidden = false;
    setEmbeddingState("error");
  }

  // The image's bytes as plain base64 (not a data URL: a file the browser has no type for
  // would be labelled application/octet-stream, which the server refuses as not an image).
  function base64Of(blob) {
    return new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(reader.result.slice(reader.result.indexOf(",") + 1));
      reader.onerror = () => reject(reader.error || new Error("the file could not be read"));
      reader.readAsDataURL(blob);
    });
  }

  async function embed(image) {
    embedding.image = image;
    embedding.key = embeddingKey(image);
    if (embedding.controller) embedding.controller.abort();
    const controller = new AbortController();
    embedding.controller = controller;
    const seq = ++embedding.seq;
    // Sent, not left to the server's default: the page says which pooling it shows.
    const pooling = el.pooling.value;
    const body = { input: [], pooling, encoding_format: "float" };
    if (state.models.length > 1) body.model = el.model.value;
    el.embeddingOf.textContent = `of ${image.name}`;
    setEmbeddingState("loading");

    let resp;
    try {
      body.input.push(await base64Of(image.blob));
      if (seq !== embedding.seq) return;
      resp = await api("v1/embeddings", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
        signal: controller.signal,
      });
    } catch (err) {
      if (err.name === "AbortError" || seq !== embedding.seq) return;
      embeddingFailed(`cannot reach the server: ${err.message}`);
      return;
    }
    if (seq !== embedding.seq) return;
    if (resp.status === 401) {
      // The reconstruction's own 401 brings up the key prompt; ask again once it is given.
      embedding.key = "";
      embedding.vector = null;
      el.copy.disabled = true;
      el.embeddingOf.textContent = "";
      setEmbeddingState("empty");
      return;
    }
    let answer = null;
    const text = resp.ok ? "" : await errorText(resp);
    if (resp.ok) {
      try {
        answer = await resp.json();
      } catch (err) {
        answer = null;
      }
    }
    if (seq !== embedding.seq) return;
    embedding.controller = null;
    const vector = answer && answer.data && answer.data[0] && answer.data[0].embedding;
    if (!resp.ok || !Array.isArray(vector) || vector.length === 0) {
      embeddingFailed(text || "the server's answer holds no vector");
      return;
    }
    el.embeddingError.hidden = true;
    el.embeddingError.textContent = "";
    // The answer's own pooling when it states one, else the one this page asked for.
    showEmbedding(vector, answer.pooling || pooling, image.name);
    setEmbeddingState("done");
  }

  function showEmbedding(vector, pooling, name) {
    embedding.vector = vector;
    let sum = 0;
    let min = Infinity;
    let max = -Infinity;
    for (const v of vector) {
      sum += v * v;
      min = Math.min(min, v);
      max = Math.max(max, v);
    }
    const norm = Math.sqrt(sum);
    el.embeddingDim.textContent = String(vector.length);
    el.embeddingNorm.textContent = norm.toFixed(4);
    el.embeddingPooling.textContent = pooling;
    el.embeddingRange.textContent = `${min.toPrecision(3)} to ${max.toPrecision(3)}`;
    el.copy.disabled = false;
    el.copied.textContent = "";
    drawStrip(vector);
    el.strip.setAttribute(
      "aria-label",
      `Embedding of ${name}: ${vector.length} numbers, ${pooling} pooling, from `
        + `${min.toPrecision(3)} to ${max.toPrecision(3)}, L2 norm ${norm.toFixed(4)}`,
    );
  }

  // One bar per number, from a middle line: up for positive, down for negative, the
  // largest magnitude reaching the edge. A non-zero number gets at least one pixel, so
  // every sign shows.
  function drawStrip(vector) {
    const n = vector.length;
    const bar = Math.max(1, Math.floor(STRIP_WIDTH / n));
    const canvas = el.strip;
    canvas.width = n * bar;
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    const mid = Math.floor(canvas.height / 2);
    const reach = mid - 1;
    let peak = 0;
    for (const v of vector) peak = Math.max(peak, Math.abs(v));
    const width = bar >= 3 ? bar - 1 : bar; // a gap between wide bars
    for (let i = 0; i < n; i++) {
      const v = vector[i];
      if (v === 0 || peak === 0) continue;
      const h = Math.max(1, Math.round((Math.abs(v) / peak) * reach));
      ctx.fillStyle = v > 0 ? STRIP_UP : STRIP_DOWN;
      ctx.fillRect(i * bar, v > 0 ? mid - h : mid, width, h);
    }
  }

  // The clipboard API needs a secure context (https, or this machine); elsewhere (a plain
  // http address on the network) a selected text area and the copy command do it.
  async function copyVector() {
    const vector = embedding.vector;
    if (!vector) return;
    const text = JSON.stringify(vector);
    try {
      if (navigator.clipboard && window.isSecureContext) {
        await navigator.clipboard.writeText(text);
      } else {
        copyBySelection(text);
      }
      el.copied.textContent = `Copied ${vector.length} numbers as a JSON array.`;
    } catch (err) {
      el.copied.textContent = `Could not copy: ${err.message || err}`;
    }
  }

  function copyBySelection(text) {
    const area = document.createElement("textarea");
    area.value = text;
    area.readOnly = true;
    area.className = "visually-hidden";
    document.body.append(area);
    area.select();
    const ok = document.execCommand("copy");
    area.remove();
    el.copy.focus();
    if (!ok) throw new Error("the browser refused to copy");
  }

  // -- choosing an image -----------------------------------------------------------------
  // `sample`: the sample photo's file name, when the image is one.
  function choose(blob, name, sample = null) {
    // While the key prompt is up its message stays: the image waits for the key.
    if (el.keyForm.hidden) clearError();
    reconstruct({ blob, name, sample, id: ++state.images });
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

  // Grid masking pins the slider to 0.75 (and says why); leaving it gives back the ratio
  // the slider had before.
  function showStrategy() {
    const grid = el.strategy.value === "grid";
    if (grid && !el.ratio.disabled) {
      state.ratioBeforeGrid = el.ratio.value;
      el.ratio.value = GRID_RATIO;
    } else if (!grid && el.ratio.disabled && state.ratioBeforeGrid !== null) {
      el.ratio.value = state.ratioBeforeGrid;
      state.ratioBeforeGrid = null;
    }
    el.ratio.disabled = grid;
    el.ratioFixed.hidden = !grid;
    el.ratioOut.textContent = Number(el.ratio.value).toFixed(2);
    el.strategyHelp.textContent = STRATEGY_HELP[el.strategy.value] || "";
  }

  el.strategy.addEventListener("change", () => {
    showStrategy();
    schedule(0);
  });
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
  el.pooling.addEventListener("change", () => {
    // The image the panels show; else (no reconstruction yet, or a model without its
    // decoder) the one last embedded.
    const image = state.image || embedding.image;
    if (state.ready && image) embed(image);
  });
  el.copy.addEventListener("click", copyVector);
  el.keyForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    state.apiKey = el.key.value.trim();
    clearError();
    setStatus("Checking the key…", "warn");
    if (state.image && !state.waiting) hold(state.image);
    loadModels();
  });

  showStrategy(); // a browser may restore a choice from before a reload
  loadSamples();
  checkReady();
})();
