// A small, dependency-free viewer for /openapi.json, so that /docs works
// without any network access beyond this server.
"use strict";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  for (const child of children) node.append(child);
  return node;
}

function resolve(spec, schema) {
  if (schema && schema.$ref) {
    const name = schema.$ref.split("/").pop();
    return (spec.components && spec.components.schemas && spec.components.schemas[name]) || schema;
  }
  return schema;
}

function example(spec, schema, depth) {
  schema = resolve(spec, schema) || {};
  if (depth > 4) return null;
  if (schema.oneOf || schema.anyOf) return example(spec, (schema.oneOf || schema.anyOf)[0], depth + 1);
  const type = Array.isArray(schema.type) ? schema.type.find((t) => t !== "null") : schema.type;
  if (type === "object" || schema.properties) {
    const out = {};
    for (const [key, value] of Object.entries(schema.properties || {})) out[key] = example(spec, value, depth + 1);
    return out;
  }
  if (type === "array") return [example(spec, schema.items, depth + 1)];
  if (type === "integer" || type === "number") return 0;
  if (type === "boolean") return false;
  if (schema.format === "uuid") return "00000000-0000-0000-0000-000000000000";
  if (schema.format === "date-time") return "2030-01-01T00:00:00Z";
  if (schema.enum) return schema.enum[0];
  return type === "string" ? "string" : null;
}

function operationView(spec, path, method, op) {
  const secured = (op.security || spec.security || []).length > 0;
  const summary = el("summary", {},
    el("span", { class: "method " + method }, method),
    el("span", { class: "path" }, path),
    el("span", {}, op.summary || ""),
    el("span", { class: "lock" }, secured ? "🔒 bearer" : "public"));
  const body = el("div", { class: "body" });
  if (op.description) body.append(el("p", {}, op.description));
  if (op.parameters && op.parameters.length) {
    const rows = op.parameters.map((p) => el("tr", {},
      el("td", {}, el("code", {}, p.name)), el("td", {}, p.in), el("td", {}, p.required ? "required" : "optional"),
      el("td", {}, p.description || "")));
    body.append(el("h4", {}, "Parameters"), el("table", {}, ...rows));
  }
  if (op.requestBody) {
    for (const [type, media] of Object.entries(op.requestBody.content || {})) {
      body.append(el("h4", {}, "Request body (" + type + ")"),
        el("pre", {}, JSON.stringify(example(spec, media.schema, 0), null, 2)));
    }
  }
  const responses = Object.entries(op.responses || {}).map(([status, response]) => {
    const media = response.content && Object.values(response.content)[0];
    const shape = media && media.schema ? el("pre", {}, JSON.stringify(example(spec, media.schema, 0), null, 2)) : "";
    return el("tr", {}, el("td", {}, el("code", {}, status)), el("td", {}, response.description || "", shape));
  });
  body.append(el("h4", {}, "Responses"), el("table", {}, ...responses));
  const details = el("details", { "data-search": (method + " " + path + " " + (op.summary || "")).toLowerCase() }, summary, body);
  return details;
}

async function main() {
  const routes = document.getElementById("routes");
  const spec = await (await fetch("/openapi.json")).json();
  document.getElementById("title").textContent = spec.info.title + " " + spec.info.version;
  document.getElementById("description").textContent = spec.info.description || "";
  const byTag = new Map();
  for (const [path, item] of Object.entries(spec.paths)) {
    for (const method of ["get", "post", "put", "patch", "delete"]) {
      const op = item[method];
      if (!op) continue;
      const tag = (op.tags && op.tags[0]) || "other";
      if (!byTag.has(tag)) byTag.set(tag, []);
      byTag.get(tag).push(operationView(spec, path, method, op));
    }
  }
  routes.replaceChildren();
  for (const [tag, views] of byTag) routes.append(el("h2", {}, tag), ...views);
  document.getElementById("filter").addEventListener("input", (event) => {
    const needle = event.target.value.toLowerCase();
    for (const node of routes.querySelectorAll("details")) {
      node.hidden = needle && !node.dataset.search.includes(needle);
    }
  });
}

main().catch((err) => {
  document.getElementById("routes").textContent = "Could not load /openapi.json: " + err;
});
