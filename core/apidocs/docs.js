// The docs page of a ripple service (GET /api/docs): renders the service's
// own OpenAPI document. No validator badge (it would ask a server
// elsewhere); "Try it out" sends requests to this service only (the
// document's server is "/").
"use strict";
window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "/api/v1/openapi.json",
    dom_id: "#swagger-ui",
    validatorUrl: null,
    deepLinking: true,
    displayOperationId: false,
    defaultModelsExpandDepth: 0,
  });
});
