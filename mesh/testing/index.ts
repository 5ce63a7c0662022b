/** Helpers for integration tests: real Postgres, real NATS, isolated per run. */
export {
  createTestDatabase,
  dropLeftoverTestDatabases,
  testServerUrl,
  withAdmin,
  DEFAULT_TEST_SERVER,
  type TestDatabase,
  type Teardownable,
} from './database.js';
export { dropLeftoverTestStreams, testNatsPrefix, testNatsUrl, type TestNatsPrefix } from './nats.js';
export { freePort } from './ports.js';
export { deleteTestStreams, startServiceForTest, type ServiceForTestOptions, type ServiceUnderTest } from './service-app.js';
export { sameOutcome, settle } from './outcomes.js';
export { recordStatements, statementsOfTransaction } from './statements.js';
