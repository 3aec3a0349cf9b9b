-- 0004: the change feed also reports changes of the attributes alert rules read (kind,
-- district, location, road position, install), so the service's attribute cache follows
-- them. last_seen, written every few seconds, still never bumps updated_at.

DROP TRIGGER IF EXISTS devices_touch ON devices;
CREATE TRIGGER devices_touch
    BEFORE UPDATE ON devices
    FOR EACH ROW
    WHEN ((OLD.external_id, OLD.status, OLD.profile, OLD.kind, OLD.district, OLD.tenant,
           OLD.lat, OLD.lon, OLD.road, OLD.road_km, OLD.install)
          IS DISTINCT FROM
          (NEW.external_id, NEW.status, NEW.profile, NEW.kind, NEW.district, NEW.tenant,
           NEW.lat, NEW.lon, NEW.road, NEW.road_km, NEW.install))
    EXECUTE FUNCTION cityflux_devices_touch();
DROP TRIGGER IF EXISTS devices_changed ON devices;
CREATE TRIGGER devices_changed
    AFTER INSERT OR UPDATE OF external_id, status, profile, kind, district, tenant, lat, lon,
        road, road_km, install OR DELETE ON devices
    FOR EACH STATEMENT EXECUTE FUNCTION cityflux_devices_changed();
