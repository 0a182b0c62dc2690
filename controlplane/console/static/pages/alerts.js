// Alerts: the events page for events of type `alert` (pages/events.js).
import {renderEvents} from './events.js';

export const title = 'Alerts';
export const roles = ['admin', 'operator', 'auditor', 'viewer'];

export async function render(root, ctx) {
  return renderEvents(root, ctx, {fixed: {type: 'alert'}});
}
