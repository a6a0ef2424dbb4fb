// The map: district and township boundaries (the user's GeoJSON) on a plain background, sites
// coloured by their highest open level. Tiles only when the console is configured with a tile URL.
"use strict";
(function () {
  const { api, live, esc } = window.lifeline;
  const COLOURS = { 0: "#3fae6a", 1: "#3a7bd5", 2: "#e0c030", 3: "#f08a24", 4: "#e5383b" };
  const map = L.map("map", { zoomSnap: 0.25, preferCanvas: true, attributionControl: false });
  const sites = L.layerGroup().addTo(map);
  let fitted = false;
  let boundsLayer = null;

  function siteMarker(s) {
    const marker = L.circleMarker([s.lat, s.lon], {
      radius: s.open ? 8 + Math.min(s.open, 6) : 6, color: "#000", weight: 2,
      fillColor: COLOURS[s.level] || COLOURS[0], fillOpacity: 0.9,
    });
    marker.bindPopup(`<b>${esc(s.name || s.site)}</b><br>${esc(s.township)}, ${esc(s.district)}<br>` +
      `highest open level ${s.level} · ${s.open} open case(s)${s.faults ? ` · ${s.faults} sensor fault(s)` : ""}<br>` +
      `<a href="/?q=${encodeURIComponent(s.site)}">its alerts</a> · <a href="/maintenance?q=${encodeURIComponent(s.site)}">its faults</a>`);
    marker.options.siteId = s.site;
    return marker;
  }

  async function loadBoundaries(data) {
    if (!data.boundaries) return;
    const geo = await api("/api/boundaries");
    boundsLayer = L.geoJSON(geo, {
      style: (f) => f.properties.township
        ? { color: "#6b7b8c", weight: 1, fillColor: "#1b2530", fillOpacity: 0.5, dashArray: "3 3" }
        : { color: "#a9b7c6", weight: 2.5, fill: false },
      onEachFeature: (f, layer) => layer.bindTooltip(esc(f.properties.name || f.properties.township || f.properties.district),
        { sticky: true }),
    }).addTo(map);
    boundsLayer.bringToBack();
  }

  async function refresh() {
    const data = await api("/api/map");
    sites.clearLayers();
    const placed = data.sites.map((s) => siteMarker(s).addTo(sites));
    placed.sort((a, b) => 0);
    document.getElementById("map-summary").innerHTML = `${data.sites.length} site(s) on the map, ` +
      `${data.sites.filter((s) => s.open).length} with open cases`;
    document.getElementById("unplaced").innerHTML = data.unplaced.length
      ? data.unplaced.map((s) => `<li>${esc(s.site)} (${esc(s.township)}) level ${s.level}</li>`).join("")
      : "<li>none</li>";
    if (!fitted) {
      fitted = true;
      if (data.tile_url) {
        L.tileLayer(data.tile_url, { attribution: data.tile_attribution, maxZoom: 19 }).addTo(map);
        L.control.attribution({ prefix: false }).addTo(map);
      }
      await loadBoundaries(data);
      const bounds = boundsLayer && boundsLayer.getLayers().length ? boundsLayer.getBounds()
        : (placed.length ? L.featureGroup(placed).getBounds() : null);
      if (bounds && bounds.isValid()) map.fitBounds(bounds.pad(0.05));
      else map.setView([29.56, 106.55], 11);
    }
    document.getElementById("map").dataset.sites = String(data.sites.length);
  }

  let timer = null;
  live.on("cases", () => { clearTimeout(timer); timer = setTimeout(refresh, 500); });
  live.on("agent", () => { clearTimeout(timer); timer = setTimeout(refresh, 500); });
  live.start();
  refresh();
})();
