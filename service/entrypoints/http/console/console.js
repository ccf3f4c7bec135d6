// The operations console: plain JavaScript over the REST API of the same server.
// The token is entered once and kept in sessionStorage (this tab only); every value shown
// is set as text, never parsed as HTML.
"use strict";

const REFRESH_MS = 2000;
const TOKEN_KEY = "console.token";
const FOLDER_KEY = "console.folder";
// The one thing kept across tabs and visits (localStorage): "utc" or "local". Never the token.
const TIME_ZONE_KEY = "console.timeZone";

// generation: bumped by every refresh and folder change; an answer of an older one is dropped,
// so nothing of a folder left (or of a refresh overtaken) is drawn.
// shownAt: when what is drawn was read ("" once a folder is left).
// imageId/imageName: the image whose operations are shown; operationId: the one found by ID.
const state = {
  folder: "", imageId: "", imageName: "", operationId: "", timer: null, refreshFailed: false,
  generation: 0, shownAt: "",
};

function $(id) { return document.getElementById(id); }

function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }

class ApiError extends Error {
  constructor(status, body, requestId) {
    const text = body && body.message ? body.message : `HTTP ${status}`;
    super(requestId ? `${text} (HTTP ${status}, request ${requestId})` : `${text} (HTTP ${status})`);
    this.status = status;
  }
}

async function api(method, path) {
  const response = await fetch(path, {
    method,
    headers: { "Authorization": `Bearer ${token()}`, "Accept": "application/json" },
    cache: "no-store",
  });
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) throw new ApiError(response.status, body, response.headers.get("X-Request-Id"));
  return body;
}

function say(text, kind) {
  const message = $("message");
  message.textContent = text || "";
  message.className = kind || "";
  message.hidden = !text;
}

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text === undefined || text === null ? "" : String(text);
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

function kindOf(operation) {
  const type = (operation.metadata && operation.metadata["@type"]) || "";
  const match = /\.(Create|Update|Delete)ImageMetadata$/.exec(type);
  return match ? match[1].toLowerCase() : type;
}

function imageOf(operation) {
  return (operation.metadata && operation.metadata.imageId) || "";
}

// "name (id)", or the ID alone when the name is not known (or the image is gone).
function imageLabel(imageId, imageName) {
  return imageName ? `${imageName} (${imageId})` : imageId;
}

// The public API tells done or not; the console's own read also tells accepted from running.
function progressOf(operation) {
  if (!operation.done) return "unfinished";
  if (!operation.error) return "done";
  return operation.error.code === 1 ? "cancelled" : "failed";
}

function duration(operation) {
  const started = Date.parse(operation.createdAt);
  const ended = operation.done ? Date.parse(operation.modifiedAt) : Date.now();
  if (Number.isNaN(started) || Number.isNaN(ended)) return "";
  const seconds = Math.max(0, (ended - started) / 1000);
  // An Update takes milliseconds: "0.0 s" would say nothing.
  const text = seconds < 1 ? `${Math.round(seconds * 1000)} ms`
    : seconds < 60 ? `${seconds.toFixed(1)} s`
      : `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
  return operation.done ? text : `${text} so far`;
}

function timeZone() {
  return localStorage.getItem(TIME_ZONE_KEY) === "utc" ? "utc" : "local";
}

// A moment in the zone chosen: "2026-12-05 21:04:05 UTC", or the browser's own local format.
function format(date, withDate) {
  if (timeZone() === "utc") {
    const iso = date.toISOString();
    return `${withDate ? `${iso.slice(0, 10)} ` : ""}${iso.slice(11, 19)} UTC`;
  }
  return withDate ? date.toLocaleString() : date.toLocaleTimeString();
}

function when(timestamp) {
  const time = Date.parse(timestamp);
  return Number.isNaN(time) ? "" : format(new Date(time), true);
}

function cancelButton(row, operation, imageName) {
  const td = cell(row, "");
  if (operation.done) return;
  const button = document.createElement("button");
  button.type = "button";
  button.className = "cancel";
  button.dataset.operationId = operation.id;
  button.textContent = "Cancel";
  button.addEventListener("click", () => cancel(operation, imageName, button));
  td.appendChild(button);
}

// The image's name, with its ID below (the ID alone once the image is gone).
function imageCell(row, imageId, imageName) {
  const td = cell(row, imageName ? "" : imageId, imageName ? "image" : "id");
  if (!imageName) return;
  const name = document.createElement("span");
  name.textContent = imageName;
  const id = document.createElement("span");
  id.className = "sub id";
  id.textContent = imageId;
  td.append(name, id);
}

function operationRow(operation, progress, withImage, imageName) {
  const row = document.createElement("tr");
  row.dataset.operationId = operation.id;
  row.dataset.progress = progress;
  if (operation.id === state.operationId) row.className = "found";
  cell(row, operation.id, "id");
  if (withImage) imageCell(row, imageOf(operation), imageName);
  cell(row, kindOf(operation));
  cell(row, progress, `progress ${progress}`);
  cell(row, operation.createdBy);
  cell(row, when(operation.createdAt));
  cell(row, duration(operation));
  cell(row, operation.error ? operation.error.message : "", "error");
  cancelButton(row, operation, imageName);
  return row;
}

function fill(tableId, rows) {
  const body = $(tableId).querySelector("tbody");
  body.replaceChildren(...rows);
  const empty = document.querySelector(`.empty[data-for="${tableId}"]`);
  if (empty) empty.hidden = rows.length > 0;
}

// Each load* fetches, then gives back what draws it: nothing is drawn until every part of a
// refresh has answered, and only if no newer refresh or folder came meanwhile.
async function loadRecent() {
  if (!state.folder) return () => {};
  const folder = encodeURIComponent(state.folder);
  const answer = await api("GET", `/console/api/folders/${folder}/operations?pageSize=50`);
  return () => fill("recent", (answer.operations || []).map(
    (each) => operationRow(each.operation, each.progress, true, each.imageName)));
}

async function loadImages() {
  if (!state.folder) return () => {};
  const folder = encodeURIComponent(state.folder);
  const answer = await api("GET", `/baremetal/v1alpha/images?folderId=${folder}&pageSize=100`);
  return () => fill("images", (answer.images || []).map((image) => {
    const row = document.createElement("tr");
    row.dataset.imageId = image.id;
    row.dataset.status = image.status;
    cell(row, image.name);
    cell(row, image.id, "id");
    cell(row, image.status, `status ${String(image.status).toLowerCase()}`);
    cell(row, image.checksum, "id");
    cell(row, when(image.createdAt));
    const button = document.createElement("button");
    button.type = "button";
    button.className = "secondary show-operations";
    button.textContent = "Operations";
    button.addEventListener("click", () => { selectImage(image.id, image.name); refresh(); });
    cell(row, "").appendChild(button);
    return row;
  }));
}

async function loadImageOperations() {
  const imageId = state.imageId;
  if (!imageId) return () => { $("image-operations-section").hidden = true; };
  const image = encodeURIComponent(imageId);
  const answer = await api("GET", `/baremetal/v1alpha/images/${image}/operations?pageSize=50`);
  return () => {
    $("image-operations-section").hidden = false;
    $("selected-image").textContent = imageLabel(imageId, state.imageName);
    fill("image-operations", (answer.operations || []).map(
      (operation) => operationRow(operation, progressOf(operation), false, state.imageName)));
  };
}

// The operation found by its ID, followed live like the tables.
async function loadFound() {
  const operationId = state.operationId;
  if (!operationId) return () => { $("found-section").hidden = true; };
  const operation = await api("GET", `/operations/${encodeURIComponent(operationId)}`);
  const imageName = imageOf(operation) === state.imageId ? state.imageName : "";
  return () => {
    $("found-section").hidden = false;
    $("found-id").textContent = operationId;
    fill("found", [operationRow(operation, progressOf(operation), true, imageName)]);
  };
}

function selectImage(imageId, imageName) {
  state.imageId = imageId;
  state.imageName = imageName || "";
}

// Shows another folder: what the last one showed goes at once, and the choice is kept.
function showFolder(folder) {
  if (folder !== state.folder) forgetShown();
  state.folder = folder;
  $("folder").value = folder;
  sessionStorage.setItem(FOLDER_KEY, folder);
}

async function readImage(imageId) {
  try {
    return await api("GET", `/baremetal/v1alpha/images/${encodeURIComponent(imageId)}`);
  } catch (error) {
    if (error.status === 404) return null;  // gone: the operation is shown without it
    throw error;
  }
}

// Find by ID: an image (img…) shows its folder and its operations; an operation shows itself,
// live, and, while its image exists, that image's folder and operations.
async function find(id) {
  let found;
  try {
    if (id.startsWith("img")) {
      const image = await api("GET", `/baremetal/v1alpha/images/${encodeURIComponent(id)}`);
      showFolder(image.folderId);
      selectImage(image.id, image.name);
      state.operationId = "";
      found = `Image ${imageLabel(image.id, image.name)} in folder ${image.folderId}`;
    } else {
      const operation = await api("GET", `/operations/${encodeURIComponent(id)}`);
      const imageId = imageOf(operation);
      const image = imageId ? await readImage(imageId) : null;
      if (image) {
        showFolder(image.folderId);
        selectImage(image.id, image.name);
      } else {
        selectImage("", "");
      }
      state.operationId = operation.id;
      found = `Operation ${operation.id}: ${kindOf(operation)} of ` +
        (image ? `${imageLabel(image.id, image.name)} in folder ${image.folderId}`
          : `${imageId}, which no longer exists`);
    }
  } catch (error) {
    say(`Nothing found for ${id}: ${error.message}`, "problem");
    return;
  }
  say(found, "ok");
  await refresh();
  const section = state.operationId ? "found-section" : "image-operations-section";
  $(section).scrollIntoView({ block: "nearest" });
}

// Leaving a folder: its data goes at once, before the next folder's answers (or refusal).
function forgetShown() {
  state.generation += 1;
  fill("recent", []);
  fill("images", []);
  fill("image-operations", []);
  fill("found", []);
  $("image-operations-section").hidden = true;
  $("found-section").hidden = true;
  $("refreshed").textContent = "";
  state.shownAt = "";
}

async function cancel(operation, imageName, button) {
  const operationId = operation.id;
  const what = `${kindOf(operation)} of ${imageLabel(imageOf(operation), imageName)}`;
  // confirm() holds the page's timers too: nothing is redrawn under the question.
  if (!window.confirm(`Cancel operation ${operationId} (${what})?\n\n` +
    "It ends with the error CANCELLED and what it started is undone.")) return;
  button.disabled = true;
  try {
    const operation = await api("POST", `/operations/${encodeURIComponent(operationId)}:cancel`);
    say(`Operation ${operation.id}: ${progressOf(operation)}`, "ok");
  } catch (error) {
    say(`Cancel of ${operationId} refused: ${error.message}`, "problem");
  }
  await refresh();
}

async function refresh() {
  clearTimeout(state.timer);
  if (!(state.folder || state.operationId) || !token()) return;
  const generation = ++state.generation;
  try {
    const draws = await Promise.all(
      [loadRecent(), loadImages(), loadImageOperations(), loadFound()]);
    if (generation !== state.generation) return;  // overtaken: the newer one draws
    draws.forEach((draw) => draw());
    state.shownAt = format(new Date(), false);
    $("refreshed").textContent = `updated ${state.shownAt}`;
    if (state.refreshFailed) say("");  // the problem was the refresh's, and it is over
    state.refreshFailed = false;
  } catch (error) {
    if (generation !== state.generation) return;
    say(error.message, "problem");
    // Whatever is drawn is this folder's (a folder left is cleared), and is said to be old.
    $("refreshed").textContent = `refresh failed ${format(new Date(), false)}` +
      (state.shownAt ? `; showing what was read at ${state.shownAt}` : "");
    state.refreshFailed = true;
  }
  state.timer = setTimeout(refresh, REFRESH_MS);
}

function showSignedIn() {
  const signedIn = Boolean(token());
  $("sign-in").hidden = signedIn;
  $("console").hidden = !signedIn;
  if (signedIn) {
    state.folder = sessionStorage.getItem(FOLDER_KEY) || "";
    $("folder").value = state.folder;
    (state.folder ? $("show-folder") : $("folder")).focus();
    refresh();
  } else {
    clearTimeout(state.timer);
    $("token").focus();
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    $("token").value = "";
    showSignedIn();
  });
  $("folder-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const folder = $("folder").value.trim();
    showFolder(folder);
    selectImage("", "");
    state.operationId = "";
    $("found-section").hidden = true;
    say("");
    refresh();
  });
  $("find-form").addEventListener("submit", (event) => {
    event.preventDefault();
    find($("find").value.trim());
  });
  const zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
  $("local-zone").textContent = zone ? `Local time (${zone})` : "Local time";
  $("time-zone").value = timeZone();
  $("time-zone").addEventListener("change", () => {
    localStorage.setItem(TIME_ZONE_KEY, $("time-zone").value);
    refresh();
  });
  $("forget-token").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    say("");
    showSignedIn();
  });
  showSignedIn();
});
