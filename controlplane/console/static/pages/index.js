// The console's pages, in navigation order: each name is a module pages/<name>.js that
// exports `title`, `roles` (who sees it in the navigation) and `async render(root, ctx)`.
// A page whose module fails to load is left out of the navigation (the error is logged).
export const PAGES = [
  'overview',
  'agents',
  'policies',
  'events',
  'alerts',
  'images',
  'registries',
  'audit',
  'users',
  'tokens',
  'tenants',
];
