// ESLint for the API Keys page's modules (src/control/admin/ui/*.js), run by .ci/run with the
// packages it installs into target/ci-tools/npm.
import js from "@eslint/js";
import globals from "globals";

export default [
  js.configs.recommended,
  {
    files: ["src/control/admin/ui/**/*.js"],
    languageOptions: {
      ecmaVersion: 2022,
      sourceType: "module",
      globals: globals.browser,
    },
    rules: {
      "no-unused-vars": ["error", { args: "after-used", argsIgnorePattern: "^_" }],
      eqeqeq: "error",
      "no-implied-eval": "error",
      "no-new-func": "error",
      "no-eval": "error",
      "prefer-const": "error",
      "no-var": "error",
    },
  },
];
