// The page: the key, the form of POST /images, the viewer and the two galleries.

import { ApiError, api, key } from "./api.js";
import { Gallery } from "./gallery.js";
import { Viewer } from "./viewer.js";

const $ = (id) => document.getElementById(id);

const viewer = new Viewer({
  onFinished: () => mine.refresh(),
  onUnauthorized: (err) => signOut(err.message),
});

const mine = new Gallery("mine", {
  load: api.mine,
  own: true,
  actions: {
    setPrivacy: api.setPrivacy,
    remove: async (id) => {
      await api.remove(id);
      if (viewer.current?.id === id) viewer.clear();
    },
  },
  onOpen: (image, options) => viewer.show(image, options),
  onUnauthorized: (err) => signOut(err.message),
});

const others = new Gallery("public", {
  load: api.public,
  own: false,
  onOpen: (image, options) => viewer.show(image, options),
  onUnauthorized: (err) => signOut(err.message),
});

// -- the key ---------------------------------------------------------------------------

function signIn(value) {
  $("key-prefix").textContent = `${value.slice(0, 8)}…`;
  $("key-status").hidden = false;
  $("key-section").hidden = true;
  $("app").hidden = false;
  mine.go(1);
  others.go(1);
}

function signOut(message = "") {
  key.forget();
  viewer.clear();
  mine.stop();
  others.stop();
  // The next person at this browser starts from a clean form.
  $("create-form").reset();
  $("create-error").textContent = "";
  for (const name of ["quality", "creativity"]) $(`${name}-value`).value = $(name).value;
  $("app").hidden = true;
  $("key-status").hidden = true;
  $("key-section").hidden = false;
  $("key-error").textContent = message;
  $("key-input").value = "";
  $("key-input").focus();
}

$("key-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const value = $("key-input").value.trim();
  if (!value) {
    $("key-error").textContent = "Enter an API key.";
    return;
  }
  const button = event.submitter;
  if (button) button.disabled = true;
  try {
    await api.check(value); // a wrong key is refused here, not at the first image
    key.set(value);
    $("key-error").textContent = "";
    signIn(value);
  } catch (err) {
    $("key-error").textContent =
      err instanceof ApiError && err.status === 401 ? `This key was refused: ${err.message}` : err.message;
  } finally {
    if (button) button.disabled = false;
  }
});

$("forget-key").addEventListener("click", () => signOut());

// -- the form ----------------------------------------------------------------------------

for (const name of ["quality", "creativity"]) {
  const input = $(name);
  input.addEventListener("input", () => ($(`${name}-value`).value = input.value));
}

for (const chip of document.querySelectorAll("[data-size]")) {
  chip.addEventListener("click", () => {
    const [width, height] = chip.dataset.size.split("x");
    $("width").value = width;
    $("height").value = height;
  });
}

$("prompt").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
    event.preventDefault();
    $("create-form").requestSubmit();
  }
});

// The body of POST /images: what the form says, leaving out what is left empty
// (the server's default applies). The server judges every value and names the
// field of any it refuses; that message is shown as it is.
function body() {
  const fields = { prompt: $("prompt").value };
  for (const name of ["width", "height", "seed"]) {
    const text = $(name).value.trim();
    if (text !== "") fields[name] = Number(text);
  }
  fields.quality = Number($("quality").value);
  fields.creativity = Number($("creativity").value);
  fields.hasWatermark = $("hasWatermark").checked;
  fields.mode = $("mode").value;
  if ($("systemVersion").value) fields.systemVersion = Number($("systemVersion").value);
  const baseModel = $("baseModel").value.trim();
  if (baseModel) fields.baseModel = baseModel;
  return fields;
}

$("create-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const button = $("generate");
  button.disabled = true;
  $("create-error").textContent = "";
  try {
    const image = await api.create(body());
    viewer.show(image);
    mine.go(1);
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return signOut(err.message);
    $("create-error").textContent = err.message;
  } finally {
    button.disabled = false;
  }
});

// -- the server --------------------------------------------------------------------------

async function describeServer() {
  let health;
  try {
    health = await api.health();
  } catch {
    return;
  }
  const engine = health.engine || {};
  if (engine.sandbox) {
    $("sandbox-reason").textContent = engine.reason ? `Why: ${engine.reason}` : "";
    $("sandbox-banner").hidden = false;
  }
  $("server-info").textContent =
    `openletz ${health.version} · engine ${engine.name}` +
    (health.database ? ` · ${health.database.dialect}` : "");
}

describeServer();
const saved = key.get();
if (saved) signIn(saved);
else $("key-input").focus();
