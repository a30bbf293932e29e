// Open-addressing score table: insert, look-up, overwrite, full table, invalid entries.
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "check.h"
#include "core/score_table.h"

using namespace diffmask_fast::core;

static void test_insert_lookup() {
  const int64_t capacity = 64;
  std::vector<int64_t> keys(capacity, 0);
  std::vector<float> values(capacity, 0.0f);
  std::vector<int64_t> new_keys;
  std::vector<float> new_values;
  for (int64_t i = 1; i <= 32; ++i) {  // small consecutive keys: the probe hash must spread them
    new_keys.push_back(i * 1000003);
    new_values.push_back(static_cast<float>(i) * 0.5f);
  }
  InsertResult r = table_insert(keys.data(), values.data(), capacity, new_keys.data(), new_values.data(), 32);
  CHECK(r.status == InsertStatus::kOk);
  for (int64_t i = 1; i <= 32; ++i) {
    const int64_t slot = table_find(keys.data(), capacity, i * 1000003);
    CHECK(slot >= 0);
    CHECK(values[slot] == static_cast<float>(i) * 0.5f);
  }
  CHECK(table_find(keys.data(), capacity, 12345) == -1);
  CHECK(table_find(keys.data(), capacity, 0) == -1);
  CHECK(table_find(keys.data(), 0, 5) == -1);
  // Overwrite, repeated keys in one call: the last wins.
  const int64_t again[] = {1000003, 1000003};
  const float again_values[] = {7.0f, 9.0f};
  r = table_insert(keys.data(), values.data(), capacity, again, again_values, 2);
  CHECK(r.status == InsertStatus::kOk);
  CHECK(values[table_find(keys.data(), capacity, 1000003)] == 9.0f);
  int occupied = 0;
  for (int64_t k : keys) occupied += k != 0;
  CHECK(occupied == 32);
  // Negative keys are fine.
  const int64_t negative[] = {-5};
  const float negative_value[] = {-1.5f};
  CHECK(table_insert(keys.data(), values.data(), capacity, negative, negative_value, 1).status == InsertStatus::kOk);
  CHECK(values[table_find(keys.data(), capacity, -5)] == -1.5f);
}

static void test_errors_leave_table_unchanged() {
  const int64_t capacity = 4;
  std::vector<int64_t> keys(capacity, 0);
  std::vector<float> values(capacity, 0.0f);
  const int64_t first[] = {11, 22, 33};
  const float first_values[] = {1, 2, 3};
  CHECK(table_insert(keys.data(), values.data(), capacity, first, first_values, 3).status == InsertStatus::kOk);
  const std::vector<int64_t> keys_before = keys;
  const std::vector<float> values_before = values;

  const int64_t zero[] = {44, 0};
  const float zero_values[] = {4, 5};
  InsertResult r = table_insert(keys.data(), values.data(), capacity, zero, zero_values, 2);
  CHECK(r.status == InsertStatus::kZeroKey && r.position == 1);
  const int64_t finite[] = {44};
  const float nan_value[] = {std::numeric_limits<float>::quiet_NaN()};
  r = table_insert(keys.data(), values.data(), capacity, finite, nan_value, 1);
  CHECK(r.status == InsertStatus::kNonFiniteValue && r.position == 0);
  const float inf_value[] = {std::numeric_limits<float>::infinity()};
  CHECK(table_insert(keys.data(), values.data(), capacity, finite, inf_value, 1).status ==
        InsertStatus::kNonFiniteValue);
  CHECK(keys == keys_before && values == values_before);

  // Overwrite 11, fill the last slot with 44, then 55 does not fit: everything is rolled back.
  const int64_t overflow[] = {11, 44, 55};
  const float overflow_values[] = {10, 40, 50};
  r = table_insert(keys.data(), values.data(), capacity, overflow, overflow_values, 3);
  CHECK(r.status == InsertStatus::kFull && r.position == 2);
  CHECK(keys == keys_before && values == values_before);
  // A full table still answers look-ups, present or absent.
  const int64_t last[] = {44};
  const float last_value[] = {4};
  CHECK(table_insert(keys.data(), values.data(), capacity, last, last_value, 1).status == InsertStatus::kOk);
  CHECK(table_find(keys.data(), capacity, 44) >= 0);
  CHECK(table_find(keys.data(), capacity, 99) == -1);
  // Overwriting in a full table works.
  CHECK(table_insert(keys.data(), values.data(), capacity, last, first_values, 1).status == InsertStatus::kOk);
  CHECK(values[table_find(keys.data(), capacity, 44)] == 1.0f);
}

static void test_power_of_two() {
  CHECK(is_power_of_two(1) && is_power_of_two(2) && is_power_of_two(1024));
  CHECK(!is_power_of_two(0) && !is_power_of_two(3) && !is_power_of_two(-4));
}

int main() {
  test_insert_lookup();
  test_errors_leave_table_unchanged();
  test_power_of_two();
  TEST_MAIN_END();
}
