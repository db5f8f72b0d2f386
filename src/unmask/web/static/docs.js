// The API docs at /docs: Swagger UI on /openapi.json, with every file from this server (no CDN).
"use strict";

window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  layout: "BaseLayout",
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
  deepLinking: true,
  validatorUrl: null, // the default asks a validator on the internet
});
